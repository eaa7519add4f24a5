package e2e

import (
	"context"
	"testing"

	"github.com/ftvm/ftvm/internal/testutil"
)

// etcdBed is what an etcd scenario starts from: the bed's namespaces with
// etcd's among them, the three etcd members running, and the ftvm binary.
type etcdBed struct {
	topo *Topology
	etcd *EtcdCluster
	ftvm string
}

// startEtcdBed brings the bed named name up with etcd (and opts), starts
// the etcd members and builds ftvm, or skips where KVM or the bed is
// missing. The members stop, and the bed comes down, when the test ends
// (after the scenario's own clean-ups, registered later).
func startEtcdBed(ctx context.Context, t *testing.T, name string, opts ...Option) etcdBed {
	t.Helper()
	testutil.Require(t, testutil.KVM)
	requireBed(t)
	opts = append([]Option{WithLogDir(keptDir(t, "logs")), WithEtcd()}, opts...)
	topo, err := Up(ctx, testPrefix(name), opts...)
	if err != nil {
		t.Fatalf("Up: %v", err)
	}
	t.Cleanup(func() {
		if err := topo.Down(); err != nil {
			t.Errorf("Down: %v", err)
		}
	})
	bin, ftvm := etcdBinary(t), ftvmBinary(t)
	ec, err := StartEtcd(ctx, topo, bin, keptDir(t, "etcd"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ec.Close() })
	return etcdBed{topo: topo, etcd: ec, ftvm: ftvm}
}
