package probe

import (
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/ftvm/ftvm/bench/e2e"
)

// repoRoot is the module's root, from this package's directory.
const repoRoot = "../.."

var (
	buildOnce sync.Once
	ftvmBin   string
	buildErr  error
)

// ftvmBinary builds cmd/ftvm once per test binary, with the
// ftvm_planted_delay tag (agent/probe_planted.go: a delay that only
// FTVM_PLANTED_ACK_DELAY turns on), and the guests. go test's own
// binaries have no symbol table, so the ELF tests use this one too.
func ftvmBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() { ftvmBin, buildErr = e2e.BuildFtvm(repoRoot, "ftvm_planted_delay") })
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return ftvmBin
}

func guestPath(name string) string {
	p, _ := filepath.Abs(filepath.Join(repoRoot, "vmm/guests/build", name))
	return p
}

func TestMain(m *testing.M) {
	code := m.Run()
	if ftvmBin != "" {
		os.RemoveAll(filepath.Dir(ftvmBin))
	}
	os.Exit(code)
}
