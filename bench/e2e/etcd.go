package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// The etcd members of a test bed made WithEtcd: three more machines on the
// switch (ports e1, e2, e3), 10.77.0.21 to .23, each running one member of
// a real etcd cluster (the server of go.etcd.io/etcd/server/v3, built by
// BuildEtcd: the same version as the client ftvm links).
const (
	Etcd1 Host = "e1"
	Etcd2 Host = "e2"
	Etcd3 Host = "e3"

	EtcdClientPort = 2379
	EtcdPeerPort   = 2380
)

// EtcdMembers lists the etcd machines.
var EtcdMembers = []Host{Etcd1, Etcd2, Etcd3}

// etcd's timing on the bed: a 50 ms heartbeat and a 500 ms election
// timeout, so that a lease of one second is allowed and a lost leader is
// replaced within about a second.
const (
	etcdHeartbeatMs = 50
	etcdElectionMs  = 500
	// etcdReadyTimeout bounds the wait for a quorum after a start.
	etcdReadyTimeout = 20 * time.Second
	etcdStopGrace    = 2 * time.Second
)

// BuildEtcd builds the etcd server (bench/e2e/etcdserver: etcd's etcdmain)
// into out (go's build cache makes it quick after the first time).
func BuildEtcd(ctx context.Context, repoRoot, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./bench/e2e/etcdserver")
	cmd.Dir = repoRoot
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./bench/e2e/etcdserver: %v\n%s", err, b)
	}
	return nil
}

// EtcdCluster is a three-member etcd cluster on a Topology made WithEtcd.
type EtcdCluster struct {
	topo *Topology
	bin  string
	dir  string
	life context.Context
	stop context.CancelFunc

	mu    sync.Mutex
	procs map[Host]*Proc // mu held
}

// StartEtcd starts a member on each etcd machine, with its data under
// dir, and waits until the cluster answers.
func StartEtcd(ctx context.Context, topo *Topology, bin, dir string) (*EtcdCluster, error) {
	e := &EtcdCluster{topo: topo, bin: bin, dir: dir, procs: map[Host]*Proc{}}
	e.life, e.stop = context.WithCancel(context.Background())
	for _, h := range EtcdMembers {
		if err := e.start(h, "new"); err != nil {
			e.Close()
			return nil, err
		}
	}
	if err := e.AwaitHealthy(ctx, len(EtcdMembers)); err != nil {
		e.Close()
		return nil, err
	}
	return e, nil
}

func etcdURL(h Host, port int) string {
	return "http://" + net.JoinHostPort(HostAddr(h).String(), fmt.Sprint(port))
}

func (e *EtcdCluster) start(h Host, state string) error {
	var initial []string
	for _, m := range EtcdMembers {
		initial = append(initial, string(m)+"="+etcdURL(m, EtcdPeerPort))
	}
	p, err := e.topo.Start(e.life, h, e.bin,
		"--name", string(h),
		"--data-dir", filepath.Join(e.dir, "etcd-"+string(h)),
		"--listen-client-urls", etcdURL(h, EtcdClientPort),
		"--advertise-client-urls", etcdURL(h, EtcdClientPort),
		"--listen-peer-urls", etcdURL(h, EtcdPeerPort),
		"--initial-advertise-peer-urls", etcdURL(h, EtcdPeerPort),
		"--initial-cluster", strings.Join(initial, ","),
		"--initial-cluster-state", state,
		"--initial-cluster-token", "ftvm-e2e",
		"--heartbeat-interval", fmt.Sprint(etcdHeartbeatMs),
		"--election-timeout", fmt.Sprint(etcdElectionMs),
		"--log-level", "warn",
	)
	if err != nil {
		return err
	}
	e.mu.Lock()
	e.procs[h] = p
	e.mu.Unlock()
	return nil
}

// Endpoints are the members' client URLs (--etcd-endpoints).
func (e *EtcdCluster) Endpoints() []string {
	var eps []string
	for _, h := range EtcdMembers {
		eps = append(eps, etcdURL(h, EtcdClientPort))
	}
	return eps
}

// Kill SIGKILLs member h.
func (e *EtcdCluster) Kill(h Host) error {
	e.mu.Lock()
	p := e.procs[h]
	e.mu.Unlock()
	if p == nil {
		return fmt.Errorf("no etcd member on %s", h)
	}
	if err := p.Kill(); err != nil {
		return err
	}
	<-p.Done()
	return nil
}

// Restart starts member h again on its data (after Kill).
func (e *EtcdCluster) Restart(h Host) error { return e.start(h, "existing") }

// Client is an etcd client that reaches the members from the client
// machine (this process's sockets are opened in its namespace).
func (e *EtcdCluster) Client() (*clientv3.Client, error) {
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		return e.topo.Dial(ctx, Client, "tcp", addr)
	}
	return clientv3.New(clientv3.Config{
		Endpoints:   e.Endpoints(),
		DialTimeout: 5 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(dial)},
		Logger:      zap.NewNop(),
	})
}

// AwaitHealthy waits until want members answer and one of them leads.
func (e *EtcdCluster) AwaitHealthy(ctx context.Context, want int) error {
	ctx, cancel := context.WithTimeout(ctx, etcdReadyTimeout)
	defer cancel()
	cli, err := e.Client()
	if err != nil {
		return err
	}
	defer cli.Close()
	var last error
	for {
		n, leader := 0, false
		for _, ep := range e.Endpoints() {
			sctx, scancel := context.WithTimeout(ctx, time.Second)
			st, err := cli.Status(sctx, strings.TrimPrefix(ep, "http://"))
			scancel()
			if err != nil {
				last = err
				continue
			}
			n++
			leader = leader || st.Leader != 0
		}
		if n >= want && leader {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("etcd: %d members of %d answer with a leader: %w (last error %v)", n, want, ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Leader is the member that leads now.
func (e *EtcdCluster) Leader(ctx context.Context) (Host, error) {
	cli, err := e.Client()
	if err != nil {
		return "", err
	}
	defer cli.Close()
	for _, h := range EtcdMembers {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		st, err := cli.Status(sctx, net.JoinHostPort(HostAddr(h).String(), fmt.Sprint(EtcdClientPort)))
		cancel()
		if err == nil && st.Leader == st.Header.MemberId {
			return h, nil
		}
	}
	return "", errors.New("etcd: no member says it leads")
}

// Tail is the last lines of every member's log, for failure reports.
func (e *EtcdCluster) Tail(n int) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var b strings.Builder
	for _, h := range EtcdMembers {
		if p := e.procs[h]; p != nil {
			fmt.Fprintf(&b, "etcd %s:\n%s\n", h, p.Tail(n))
		}
	}
	return b.String()
}

// Close stops every member.
func (e *EtcdCluster) Close() {
	e.mu.Lock()
	ps := e.procs
	e.procs = map[Host]*Proc{}
	e.mu.Unlock()
	for _, p := range ps {
		p.Stop(etcdStopGrace)
	}
	e.stop()
}

// etcdCutTable is the nftables table (bridge family, in the switch) that
// CutFromEtcd installs and HealEtcd removes.
const etcdCutTable = "ftvm_etcdcut"

// CutFromEtcd makes the switch drop, silently and both ways, every frame
// between host h and the etcd members: h still reaches the other VM host
// and the client, as a host whose link to the etcd cluster failed would.
func (t *Topology) CutFromEtcd(ctx context.Context, h Host) error {
	var rules strings.Builder
	for _, m := range EtcdMembers {
		fmt.Fprintf(&rules, "\t\tiifname \"%[1]s\" oifname \"%[2]s\" counter drop\n\t\tiifname \"%[2]s\" oifname \"%[1]s\" counter drop\n", h, m)
	}
	script := fmt.Sprintf(`add table bridge %[1]s
delete table bridge %[1]s
table bridge %[1]s {
	chain forward {
		type filter hook forward priority filter; policy accept;
%[2]s	}
}
`, etcdCutTable, rules.String())
	if err := t.nft(ctx, script); err != nil {
		return fmt.Errorf("cutting host %s off etcd: %w", h, err)
	}
	return nil
}

// HealEtcd undoes CutFromEtcd; harmless when nothing is cut.
func (t *Topology) HealEtcd(ctx context.Context) error {
	script := fmt.Sprintf("add table bridge %[1]s\ndelete table bridge %[1]s\n", etcdCutTable)
	if err := t.nft(ctx, script); err != nil {
		return fmt.Errorf("healing the link to etcd: %w", err)
	}
	return nil
}
