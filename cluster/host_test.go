package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"

	"github.com/ftvm/ftvm/lockstep/arbiter/etcd/etcdtest"
)

// fakeRunner stands for ftvm primary|secondary on one host. Its daemons
// play the arbiter's part the way the real ones do: a primary puts the
// VM's lease key under its host's lease (the real daemon's own lease
// dies with its host the same way), and a secondary that saw its primary
// hold the lease takes it once it is gone (the real one takes over once
// the dead primary's lease ran out at etcd).
type fakeRunner struct {
	t    *testing.T
	host string
	cli  *clientv3.Client
	k    Keys
	sess *concurrency.Session // the daemons' own lease, as a real daemon has its own

	mu       sync.Mutex
	launches []Launch
}

type fakeDaemon struct {
	r    *fakeRunner
	l    Launch
	done chan struct{}
	once sync.Once

	mu   sync.Mutex
	role string
	seen bool // a secondary saw its primary hold the lease
}

func (r *fakeRunner) Start(l Launch) (Daemon, error) {
	r.mu.Lock()
	r.launches = append(r.launches, l)
	r.mu.Unlock()
	return &fakeDaemon{r: r, l: l, done: make(chan struct{}), role: l.Role}, nil
}

func (d *fakeDaemon) Done() <-chan struct{} { return d.done }
func (d *fakeDaemon) Err() error            { return nil }
func (d *fakeDaemon) Stop()                 { d.once.Do(func() { close(d.done) }) }

func (d *fakeDaemon) State(ctx context.Context) (DaemonState, error) {
	r := d.r
	leaseKey := r.k.ArbiterLease(d.l.VM)
	g, err := r.cli.Get(ctx, leaseKey)
	if err != nil {
		return DaemonState{}, err
	}
	holder := ""
	if len(g.Kvs) > 0 {
		var rec struct{ Holder string }
		_ = json.Unmarshal(g.Kvs[0].Value, &rec)
		holder = rec.Holder
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.role == "secondary" && holder == d.l.Peer {
		d.seen = true
	}
	if (d.role == "primary" || d.seen) && holder == "" {
		b, _ := json.Marshal(map[string]any{"epoch": 1, "holder": r.host})
		resp, err := r.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(leaseKey), "=", 0)).
			Then(clientv3.OpPut(leaseKey, string(b), clientv3.WithLease(r.sess.Lease()))).
			Commit()
		if err != nil {
			return DaemonState{}, err
		}
		if resp.Succeeded {
			d.role = "primary"
		}
	}
	s := DaemonState{Role: d.role}
	if d.role == "primary" {
		// Protected while another host's daemon of the VM reports being
		// a secondary.
		at, err := r.cli.Get(ctx, r.k.VMs()+d.l.VM+"/at/", clientv3.WithPrefix())
		if err != nil {
			return DaemonState{}, err
		}
		for _, kv := range at.Kvs {
			var o DaemonState
			_ = json.Unmarshal(kv.Value, &o)
			if !strings.HasSuffix(string(kv.Key), "/"+r.host) && o.Role == "secondary" {
				s.Protected = true
			}
		}
	}
	return s, nil
}

type testHost struct {
	name    string
	runner  *fakeRunner
	cancel  context.CancelFunc
	done    chan struct{} // closed when Run returned
	crashed atomic.Bool

	mu   sync.Mutex
	sess *concurrency.Session // the host's newest session
}

func (th *testHost) session() *concurrency.Session {
	th.mu.Lock()
	defer th.mu.Unlock()
	return th.sess
}

// dialMember connects to the in-process etcd member, closed at the end
// of the test.
func dialMember(t *testing.T, m *etcdtest.Member) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{m.URL}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func startHost(t *testing.T, m *etcdtest.Member, k Keys, name string, slots int) *testHost {
	t.Helper()
	cli := dialMember(t, m)
	ttl := concurrency.WithTTL(int(etcdtest.MinTTL / time.Second))
	sess, err := concurrency.NewSession(cli, ttl)
	if err != nil {
		t.Fatal(err)
	}
	dsess, err := concurrency.NewSession(cli, ttl)
	if err != nil {
		t.Fatal(err)
	}
	r := &fakeRunner{t: t, host: name, cli: cli, k: k, sess: dsess}
	ctx, cancel := context.WithCancel(context.Background())
	th := &testHost{name: name, runner: r, sess: sess, cancel: cancel, done: make(chan struct{})}
	newSession := func(ctx context.Context) (*concurrency.Session, error) {
		s, err := concurrency.NewSession(cli, ttl, concurrency.WithContext(ctx))
		if err == nil {
			th.mu.Lock()
			th.sess = s
			th.mu.Unlock()
		}
		return s, err
	}
	h := &Host{Client: cli, Keys: k, Name: name, Info: HostInfo{Addr: "10.0.0." + name, Slots: slots},
		Session: sess, NewSession: newSession, Runner: r, Log: slog.New(slog.NewTextHandler(testWriter{t}, nil)).With("host", name)}
	go func() {
		if err := h.Run(ctx); err != nil && !th.crashed.Load() {
			t.Errorf("host %s: %v", name, err)
		}
		close(th.done)
	}()
	t.Cleanup(func() { cancel(); <-th.done; th.session().Close(); dsess.Close() })
	return th
}

// crash stops the host as a dead machine would: its lease is no longer
// kept alive (etcd deletes its keys after the TTL) and it does nothing
// more.
func (th *testHost) crash() {
	th.crashed.Store(true)
	th.session().Orphan()
	th.runner.sess.Orphan()
	th.cancel()
	<-th.done
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// awaitPool reads the pool until cond holds, or fails the test after
// the timeout with the last report.
func awaitPool(t *testing.T, cli *clientv3.Client, k Keys, what string, timeout time.Duration, cond func(*Pool) bool) *Pool {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		p, err := Read(context.Background(), cli, k)
		if err == nil && cond(p) {
			return p
		}
		if time.Now().After(deadline) {
			var b strings.Builder
			if p != nil {
				_ = Describe(p).WriteText(&b)
			}
			t.Fatalf("%s: not within %v (err %v):\n%s", what, timeout, err, b.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func allProtected(p *Pool) bool {
	for _, v := range p.VMs {
		if !v.Protected() {
			return false
		}
	}
	return len(p.VMs) > 0
}

// checkPlacements: no VM has both daemons on one host, every placed host
// is live, and no host holds more VMs than its slots.
func checkPlacements(t *testing.T, p *Pool) {
	t.Helper()
	used := map[string]int{}
	for id, v := range p.VMs {
		if v.Place == nil {
			t.Errorf("%s is not placed", id)
			continue
		}
		if v.Place.Primary == v.Place.Secondary {
			t.Errorf("%s: primary and secondary on one host %s", id, v.Place.Primary)
		}
		for _, h := range []string{v.Place.Primary, v.Place.Secondary} {
			if _, ok := p.Hosts[h]; !ok {
				t.Errorf("%s is placed on %q, which is not a live host", id, h)
			}
			used[h]++
		}
	}
	for h, n := range used {
		if n > p.Hosts[h].Slots {
			t.Errorf("host %s holds %d VMs, has %d slots", h, n, p.Hosts[h].Slots)
		}
	}
}

// TestPoolReprotectsAfterHostDies runs four hosts on a real etcd (in
// process), adds three VMs, waits for all to be protected, crashes the
// host that holds the most of them, and requires every VM protected
// again on the three hosts left, none on the dead one.
func TestPoolReprotectsAfterHostDies(t *testing.T) {
	m := etcdtest.Start(t)
	k := Keys{Prefix: "/test-pool/"}
	cli := dialMember(t, m)
	hosts := map[string]*testHost{}
	for _, name := range []string{"a", "b", "d", "e"} {
		hosts[name] = startHost(t, m, k, name, 2)
	}
	awaitPool(t, cli, k, "four hosts registered", 5*time.Second, func(p *Pool) bool { return len(p.Hosts) == 4 })
	ctx := context.Background()
	for i, id := range []string{"v1", "v2", "v3"} {
		if err := AddVM(ctx, cli, k, id, VMSpec{Port: 7001 + i, Args: []string{"--guest", "g"}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := AddVM(ctx, cli, k, "v1", VMSpec{Port: 7009}); err == nil {
		t.Error("AddVM of a VM already in the pool: no error")
	}
	if err := AddVM(ctx, cli, k, "v4", VMSpec{Port: 7001}); err == nil || !strings.Contains(err.Error(), "v1") {
		t.Errorf("AddVM on v1's port: %v, want an error naming v1", err)
	}
	p := awaitPool(t, cli, k, "three VMs protected", 10*time.Second, allProtected)
	checkPlacements(t, p)

	held := map[string][]string{}
	for id, v := range p.VMs {
		held[v.Place.Primary] = append(held[v.Place.Primary], id)
		held[v.Place.Secondary] = append(held[v.Place.Secondary], id)
	}
	victim := ""
	for _, h := range []string{"a", "b", "d", "e"} {
		if victim == "" || len(held[h]) > len(held[victim]) {
			victim = h
		}
	}
	t.Logf("crashing host %s, which holds %v", victim, held[victim])
	killed := time.Now()
	hosts[victim].crash()
	p = awaitPool(t, cli, k, "every VM protected again without host "+victim, 15*time.Second, func(p *Pool) bool {
		if _, ok := p.Hosts[victim]; ok || !allProtected(p) {
			return false
		}
		for _, v := range p.VMs {
			if v.Place.Primary == victim || v.Place.Secondary == victim {
				return false
			}
		}
		return true
	})
	t.Logf("protected again %v after the crash", time.Since(killed).Round(time.Millisecond))
	checkPlacements(t, p)
	for _, id := range held[victim] {
		v := p.VMs[id]
		if v.Place.Gen < 2 {
			t.Errorf("%s was on the dead host and its placement was never changed: %+v", id, v.Place)
		}
		// The new secondary was started as one, joining the new primary.
		sec := hosts[v.Place.Secondary].runner
		sec.mu.Lock()
		found := false
		for _, l := range sec.launches {
			if l.VM == id && l.Role == "secondary" && l.Peer == v.Place.Primary &&
				l.PeerAddr == fmt.Sprintf("10.0.0.%s:%d", v.Place.Primary, v.Spec.Port) {
				found = true
			}
		}
		sec.mu.Unlock()
		if !found {
			t.Errorf("%s: host %s was never launched as its secondary joining %s", id, v.Place.Secondary, v.Place.Primary)
		}
	}
	var b strings.Builder
	r, err := Status(ctx, cli, k)
	if err != nil {
		t.Fatal(err)
	}
	_ = r.WriteText(&b)
	if len(r.Unprotected) != 0 || len(r.Hosts) != 3 || r.Leader == "" || r.Leader == victim {
		t.Errorf("status after re-protection:\n%s", b.String())
	}
	t.Logf("ftvm cluster status:\n%s", b.String())
}

// TestHostKeepsItsDaemonsThroughALostLease revokes the lease of the host
// that runs a protected VM's primary, as etcd does when the host was cut
// off or starved for the TTL while its daemon (under a lease of its own)
// lived on. The host must register again under a new lease and keep that
// daemon: stopping it would take the VM down, although nothing else has
// taken it over.
func TestHostKeepsItsDaemonsThroughALostLease(t *testing.T) {
	m := etcdtest.Start(t)
	k := Keys{Prefix: "/test-lease-lost/"}
	cli := dialMember(t, m)
	hosts := map[string]*testHost{}
	for _, name := range []string{"a", "b", "d"} {
		hosts[name] = startHost(t, m, k, name, 2)
	}
	awaitPool(t, cli, k, "three hosts registered", 5*time.Second, func(p *Pool) bool { return len(p.Hosts) == 3 })
	ctx := context.Background()
	if err := AddVM(ctx, cli, k, "v1", VMSpec{Port: 7001, Args: []string{"--guest", "g"}}); err != nil {
		t.Fatal(err)
	}
	p := awaitPool(t, cli, k, "v1 protected", 10*time.Second, allProtected)
	prim := p.VMs["v1"].Place.Primary
	th := hosts[prim]
	old := th.session().Lease()
	if _, err := cli.Revoke(ctx, old); err != nil {
		t.Fatal(err)
	}
	t.Logf("revoked the lease %x of host %s, v1's primary", old, prim)
	awaitPool(t, cli, k, "host "+prim+" registered again under a new lease, v1 protected with it as primary", 10*time.Second, func(p *Pool) bool {
		if _, ok := p.Hosts[prim]; !ok || th.session().Lease() == old {
			return false
		}
		g, err := cli.Get(ctx, k.Host(prim))
		if err != nil || len(g.Kvs) == 0 || clientv3.LeaseID(g.Kvs[0].Lease) == old {
			return false
		}
		return allProtected(p) && p.VMs["v1"].Place.Primary == prim
	})
	select {
	case <-th.done:
		t.Fatalf("host %s stopped when its lease was lost", prim)
	default:
	}
	th.runner.mu.Lock()
	defer th.runner.mu.Unlock()
	n := 0
	for _, l := range th.runner.launches {
		if l.VM == "v1" {
			n++
		}
	}
	if n != 1 {
		t.Errorf("host %s launched v1's daemon %d times: want once, kept through the lost lease", prim, n)
	}
}
