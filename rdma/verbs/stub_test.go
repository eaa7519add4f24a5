//go:build !(ftvm_rdma && cgo && linux)

package verbs

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/ftvm/ftvm/internal/testutil"
)

func TestStubRefuses(t *testing.T) {
	if testutil.Required(testutil.RDMA) {
		t.Fatalf("%s requires rdma, but this test binary was built without RDMA support: build it with cgo and -tags ftvm_rdma (make rdma-test does)", testutil.RequireEnv)
	}
	if _, err := New(Config{Device: "rxe0"}); !errors.Is(err, ErrNotBuilt) {
		t.Fatalf("New: %v, want ErrNotBuilt", err)
	}
	if _, err := NewForPeer(netip.MustParseAddr("10.0.0.1")); !errors.Is(err, ErrNotBuilt) {
		t.Fatalf("NewForPeer: %v, want ErrNotBuilt", err)
	}
	if _, why, ok := Available(netip.MustParseAddr("10.0.0.1")); ok || !strings.Contains(why, "built without RDMA support") {
		t.Fatalf("Available = %q, %v; want false, built without RDMA support", why, ok)
	}
}
