package etcd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ftvm/ftvm/lockstep/arbiter"
)

// Defaults and bounds.
const (
	DefaultPrefix   = "/ftvm/"
	DefaultLeaseTTL = 5 * time.Second
	// MinLeaseTTL: etcd counts leases in whole seconds.
	MinLeaseTTL = time.Second
	// acquireMaxRounds bounds the reads and transactions of one Acquire
	// that lose a race (each is followed by a fresh read).
	acquireMaxRounds = 64
	vmIDMaxBytes     = 64
	holderMaxBytes   = 64
)

var namePattern = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]*$`)

// Config configures an Arbiter.
type Config struct {
	// Client is the etcd client (clientv3.New); the Arbiter does not close it.
	Client *clientv3.Client
	// Prefix is put before every key (DefaultPrefix if empty).
	Prefix string
	// Holder names this host in the records (required, 64 bytes at most).
	Holder string
	// LeaseTTL is how long a grant outlives this host's last keep-alive
	// (DefaultLeaseTTL if zero; whole seconds, MinLeaseTTL at least). A
	// secondary takes over a dead primary no sooner than this.
	LeaseTTL time.Duration
	// Logger receives the lease's events (nil: slog.Default()).
	Logger *slog.Logger
}

// Arbiter grants epochs through etcd under a lease (see the package doc).
// It is safe for concurrent use. One Arbiter holds one lease, for every
// VM it was granted.
type Arbiter struct {
	cli    *clientv3.Client
	prefix string
	holder string
	ttl    time.Duration
	log    *slog.Logger

	mu      sync.Mutex
	lease   clientv3.LeaseID  // mu held: 0 before the first grant
	held    map[string]holdOf // mu held: VMs this host holds, by vmID
	lostWhy string            // mu held: why the lease was lost
	keeping bool              // mu held: the keep-alive goroutine runs
	closed  bool              // mu held

	// deadline is when the lease runs out as this host must assume
	// (unix ns of the monotonic-based clock, see now), accessed
	// atomically: Check reads it for every release.
	deadline atomic.Int64
	holding  atomic.Bool   // some VM is held (len(held) > 0)
	lost     atomic.Bool   // a lease that held a VM was lost (sticky)
	lostCh   chan struct{} // closed when lost becomes true
	stop     chan struct{} // closed by Close
	// noRenew makes the keep-alive send nothing while it still watches
	// the deadline: what a host cut off from etcd sees (tests).
	noRenew atomic.Bool
	done    chan struct{} // closed when the keep-alive goroutine ends
}

type holdOf struct{ epoch, fence uint64 }

type mvccKV = mvccpb.KeyValue

// record is the value of the epoch and lease keys.
type record struct {
	Epoch  uint64 `json:"epoch"`
	Holder string `json:"holder"`
}

// releasedRecord is the value of the released key.
type releasedRecord struct {
	Epoch  uint64 `json:"epoch"`
	Fence  uint64 `json:"fence"`
	Holder string `json:"holder"`
}

var _ arbiter.Arbiter = (*Arbiter)(nil)

// base makes now monotonic: time.Since of one fixed instant.
var base = time.Now()

func now() int64 { return int64(time.Since(base)) }

// New returns an Arbiter over cfg.Client. It asks etcd nothing yet.
func New(cfg Config) (*Arbiter, error) {
	if cfg.Client == nil {
		return nil, errors.New("arbiter/etcd: Config.Client is nil")
	}
	if cfg.Holder == "" || len(cfg.Holder) > holderMaxBytes || !namePattern.MatchString(cfg.Holder) {
		return nil, fmt.Errorf("arbiter/etcd: host name %q: use 1 to %d letters, digits, '.', '_' or '-', not starting with '.' or '-'", cfg.Holder, holderMaxBytes)
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = DefaultLeaseTTL
	}
	if cfg.LeaseTTL < MinLeaseTTL || cfg.LeaseTTL%time.Second != 0 {
		return nil, fmt.Errorf("arbiter/etcd: lease TTL %v: give whole seconds, at least %v (etcd counts leases in seconds)", cfg.LeaseTTL, MinLeaseTTL)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Arbiter{cli: cfg.Client, prefix: cfg.Prefix, holder: cfg.Holder, ttl: cfg.LeaseTTL, log: cfg.Logger,
		held: map[string]holdOf{}, lostCh: make(chan struct{}), stop: make(chan struct{}), done: make(chan struct{})}, nil
}

func (a *Arbiter) key(vmID, name string) string { return a.prefix + "vm/" + vmID + "/" + name }

func checkVMID(vmID string) error {
	if len(vmID) > vmIDMaxBytes || !namePattern.MatchString(vmID) {
		return fmt.Errorf("arbiter/etcd: VM id %q: use 1 to %d letters, digits, '.', '_' or '-', not starting with '.' or '-'", vmID, vmIDMaxBytes)
	}
	return nil
}

// ErrLeaseLost is wrapped by Check's error once this host's lease is lost.
var ErrLeaseLost = errors.New("the arbiter's lease is lost")

// Check returns nil while this host may release outputs: it holds no VM,
// or its lease is alive by its own conservative count. From the moment
// the lease may have run out at etcd it returns an error wrapping
// ErrLeaseLost, and goes on doing so. It is cheap (two atomic loads and a
// clock read) and safe to call on any goroutine.
func (a *Arbiter) Check() error {
	if a.lost.Load() {
		return a.lostErr()
	}
	if !a.holding.Load() {
		return nil
	}
	if now() >= a.deadline.Load() {
		a.markLost(fmt.Sprintf("no keep-alive was answered within the lease's TTL (%v)", a.ttl))
		if a.lost.Load() {
			return a.lostErr()
		}
	}
	return nil
}

// Lost is closed when Check starts failing.
func (a *Arbiter) Lost() <-chan struct{} { return a.lostCh }

func (a *Arbiter) lostErr() error {
	a.mu.Lock()
	why := a.lostWhy
	a.mu.Unlock()
	return fmt.Errorf("%w: %s: this host must not release anything more, and halts", ErrLeaseLost, why)
}

// markLost records that the lease held for some VM is lost; it does
// nothing while no VM is held.
func (a *Arbiter) markLost(why string) {
	a.mu.Lock()
	if len(a.held) == 0 || a.lost.Load() {
		a.mu.Unlock()
		return
	}
	a.lostWhy = why
	a.lost.Store(true)
	close(a.lostCh)
	a.mu.Unlock()
	a.log.Error("the arbiter's lease is lost: no output is released from now on and this host halts", "why", why, "holder", a.holder)
}

// LeaseStatus is what ftvm status shows of the lease.
type LeaseStatus struct {
	ID      int64         // etcd's lease ID, 0 when none was granted
	Holding bool          // some VM is held under it
	TTL     time.Duration // the lease's TTL
	Left    time.Duration // time left by this host's count (0 once lost)
	Lost    string        // why it was lost, "" while it is not
}

// Lease reports the lease's state.
func (a *Arbiter) Lease() LeaseStatus {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := LeaseStatus{ID: int64(a.lease), Holding: len(a.held) > 0, TTL: a.ttl, Lost: a.lostWhy}
	if d := a.deadline.Load(); d != 0 && !a.lost.Load() {
		s.Left = max(0, time.Duration(d-now()))
	}
	return s
}

// Acquire implements arbiter.Arbiter (the transitions are in the package
// doc). An epoch held by another host's live lease is waited for until
// ctx ends, which is an error (ask again), not a refusal.
func (a *Arbiter) Acquire(ctx context.Context, vmID string, epoch uint64) (granted bool, fence uint64, err error) {
	if epoch == 0 {
		return false, 0, errors.New("arbiter/etcd: epoch 0 is reserved for \"no epoch yet\"; ask for epoch 1 or later")
	}
	if err := checkVMID(vmID); err != nil {
		return false, 0, err
	}
	if a.lost.Load() {
		// A host that lost its lease halts; it wins nothing more.
		return false, 0, nil
	}
	epochKey, leaseKey := a.key(vmID, "epoch"), a.key(vmID, "lease")
	for range acquireMaxRounds {
		resp, err := a.cli.Txn(ctx).Then(clientv3.OpGet(epochKey), clientv3.OpGet(leaseKey)).Commit()
		if err != nil {
			return false, 0, fmt.Errorf("arbiter/etcd: reading %s: %w", epochKey, err)
		}
		cur, epochRev, err := readRecord(resp.Responses[0].GetResponseRange().Kvs, epochKey)
		if err != nil {
			return false, 0, err
		}
		lk := resp.Responses[1].GetResponseRange().Kvs
		if epoch == cur.Epoch && cur.Holder == a.holder && len(lk) > 0 && a.lostAnswer(vmID, epoch, clientv3.LeaseID(lk[0].Lease)) {
			// An earlier ask of ours was granted, but its answer was lost.
			return a.granted(vmID, epoch, uint64(epochRev), clientv3.LeaseID(lk[0].Lease)), uint64(epochRev), nil
		}
		if epoch <= cur.Epoch {
			return false, 0, nil
		}
		mine, err := a.ensureLease(ctx)
		if err != nil {
			return false, 0, err
		}
		leaseCmp := clientv3.Compare(clientv3.CreateRevision(leaseKey), "=", 0)
		if len(lk) > 0 {
			if clientv3.LeaseID(lk[0].Lease) != mine {
				if err := a.waitGone(ctx, leaseKey, lk[0], resp.Header.Revision); err != nil {
					return false, 0, err
				}
				continue
			}
			leaseCmp = clientv3.Compare(clientv3.LeaseValue(leaseKey), "=", mine)
		}
		val, _ := json.Marshal(record{Epoch: epoch, Holder: a.holder})
		tr, err := a.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(epochKey), "=", epochRev), leaseCmp).
			Then(clientv3.OpPut(epochKey, string(val)), clientv3.OpPut(leaseKey, string(val), clientv3.WithLease(mine))).
			Commit()
		if err != nil {
			return false, 0, fmt.Errorf("arbiter/etcd: granting epoch %d of VM %s: %w (it may or may not be granted; the next ask finds out)", epoch, vmID, err)
		}
		if !tr.Succeeded {
			continue // another host wrote meanwhile: read again
		}
		fence = uint64(tr.Header.Revision)
		return a.granted(vmID, epoch, fence, mine), fence, nil
	}
	return false, 0, fmt.Errorf("arbiter/etcd: epoch %d of VM %s: lost the race %d times in a row; asking again later", epoch, vmID, acquireMaxRounds)
}

// lostAnswer reports whether epoch of vmID, which etcd shows granted to
// this host under lease, is a grant whose answer this Arbiter never saw
// (the transaction's reply was lost): lease is this Arbiter's and it does
// not know it holds that epoch. A grant it saw is never given twice.
func (a *Arbiter) lostAnswer(vmID string, epoch uint64, lease clientv3.LeaseID) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return lease != 0 && lease == a.lease && a.held[vmID].epoch != epoch
}

// granted records a grant; it returns true.
func (a *Arbiter) granted(vmID string, epoch, fence uint64, lease clientv3.LeaseID) bool {
	a.mu.Lock()
	a.held[vmID] = holdOf{epoch: epoch, fence: fence}
	a.holding.Store(true)
	a.mu.Unlock()
	a.log.Info("arbiter granted an epoch under a lease", "vm_id", vmID, "epoch", epoch, "fence", fence, "lease", fmt.Sprintf("%x", int64(lease)), "ttl", a.ttl)
	return true
}

func readRecord(kvs []*mvccKV, key string) (record, int64, error) {
	if len(kvs) == 0 {
		return record{}, 0, nil
	}
	var r record
	if err := json.Unmarshal(kvs[0].Value, &r); err != nil {
		return record{}, 0, fmt.Errorf("arbiter/etcd: %s holds %q, which is not an epoch record: %w; make sure no daemon of the VM runs, then delete the key (etcdctl del %s)", key, kvs[0].Value, err, key)
	}
	return r, kvs[0].ModRevision, nil
}

// waitGone waits until etcd deletes the lease key another host holds
// (its lease expired or was revoked), or ctx ends.
func (a *Arbiter) waitGone(ctx context.Context, leaseKey string, kv *mvccKV, rev int64) error {
	var other record
	json.Unmarshal(kv.Value, &other)
	left := "?"
	if ttl, err := a.cli.TimeToLive(ctx, clientv3.LeaseID(kv.Lease)); err == nil {
		left = fmt.Sprintf("%ds", ttl.TTL)
	}
	a.log.Info("the epoch is held under another host's live lease: waiting for it to end", "holder", other.Holder, "epoch", other.Epoch, "ttl_left", left)
	if err := a.watchGone(ctx, leaseKey, kv, rev); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("arbiter/etcd: %w: host %q holds epoch %d (%s left when asked); still waiting for it to end: %v", arbiter.ErrHeldElsewhere, other.Holder, other.Epoch, left, err)
		}
		return err
	}
	return nil
}

// watchGone returns once key, as read (kv at revision rev), is deleted or
// rewritten under another lease, or ctx ends.
func (a *Arbiter) watchGone(ctx context.Context, key string, kv *mvccKV, rev int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for wr := range a.cli.Watch(wctx, key, clientv3.WithRev(rev+1)) {
		if err := wr.Err(); err != nil {
			return fmt.Errorf("arbiter/etcd: watching %s: %w", key, err)
		}
		for _, ev := range wr.Events {
			if ev.Type == clientv3.EventTypeDelete || clientv3.LeaseID(ev.Kv.Lease) != clientv3.LeaseID(kv.Lease) {
				return nil
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return fmt.Errorf("arbiter/etcd: watching %s ended (etcd has no leader?)", key)
}

// ensureLease returns this host's lease with a whole TTL ahead when it
// holds nothing yet: renewed, or granted (and its keep-alive started)
// when there is none or it ran out.
func (a *Arbiter) ensureLease(ctx context.Context) (clientv3.LeaseID, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return 0, errors.New("arbiter/etcd: closed")
	}
	if a.lease != 0 && len(a.held) > 0 {
		return a.lease, nil // the keep-alive looks after it
	}
	if a.lease != 0 && now() < a.deadline.Load() {
		// Unused so far (a wait for another host's lease may have taken
		// most of it): renewed now, a grant starts with a whole TTL.
		sent := now()
		if ka, err := a.cli.KeepAliveOnce(ctx, a.lease); err == nil && ka.TTL > 0 {
			a.deadline.Store(sent + int64(time.Duration(ka.TTL)*time.Second))
			return a.lease, nil
		}
	}
	sent := now()
	g, err := a.cli.Grant(ctx, int64(a.ttl/time.Second))
	if err != nil {
		return 0, fmt.Errorf("arbiter/etcd: granting a lease: %w", err)
	}
	a.lease = g.ID
	a.deadline.Store(sent + int64(time.Duration(g.TTL)*time.Second))
	if !a.keeping {
		a.keeping = true
		go a.keepAlive()
	}
	return a.lease, nil
}

// keepAlive renews the lease every TTL/3 (sooner again, every
// TTL/10, after a renewal failed: a leader election in etcd takes about
// one election timeout), and marks it lost at the deadline, at once when
// etcd says it is gone, or when a VM held under it moved to another holder.
func (a *Arbiter) keepAlive() {
	defer close(a.done)
	every, retry := a.ttl/3, max(a.ttl/10, renewRetryMin)
	wait := every
	for {
		if d := time.Duration(a.deadline.Load() - now()); a.holding.Load() && d < wait {
			wait = max(d, 0) // wake at the deadline to mark the lease lost
		}
		t := time.NewTimer(wait)
		select {
		case <-a.stop:
			t.Stop()
			return
		case <-t.C:
		}
		wait = every
		a.Check() // marks the lease lost once the deadline has passed
		if a.lost.Load() {
			<-a.stop
			return
		}
		a.mu.Lock()
		id, held := a.lease, make(map[string]holdOf, len(a.held))
		for k, v := range a.held {
			held[k] = v
		}
		a.mu.Unlock()
		if len(held) == 0 || a.noRenew.Load() {
			continue // a lease held for nothing is let run out
		}
		if !a.renew(id, held, a.ttl/4) {
			wait = retry
		}
	}
}

// renewRetryMin bounds how soon a failed renewal is tried again.
const renewRetryMin = 50 * time.Millisecond

// renew sends one keep-alive and checks the VMs held; false when etcd
// could not be asked (try again soon).
func (a *Arbiter) renew(id clientv3.LeaseID, held map[string]holdOf, timeout time.Duration) bool {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	sent := now()
	ka, err := a.cli.KeepAliveOnce(ctx, id)
	switch {
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		a.markLost("etcd says the lease is gone (it expired there)")
		return true
	case err != nil:
		a.log.Warn("the arbiter's lease could not be renewed; trying again", "err", err,
			"left", time.Duration(a.deadline.Load()-now()).Round(time.Millisecond))
		return false
	case ka.TTL <= 0:
		a.markLost("etcd says the lease expired")
		return true
	}
	a.deadline.Store(sent + int64(time.Duration(ka.TTL)*time.Second))
	for vmID, h := range held {
		resp, err := a.cli.Txn(ctx).Then(clientv3.OpGet(a.key(vmID, "epoch")), clientv3.OpGet(a.key(vmID, "lease"))).Commit()
		if err != nil {
			return false
		}
		cur, _, _ := readRecord(resp.Responses[0].GetResponseRange().Kvs, "")
		lk := resp.Responses[1].GetResponseRange().Kvs
		switch {
		case cur.Epoch > h.epoch && cur.Holder != a.holder:
			a.markLost(fmt.Sprintf("host %q was granted epoch %d of VM %s", cur.Holder, cur.Epoch, vmID))
		case len(lk) == 0 || clientv3.LeaseID(lk[0].Lease) != id:
			a.markLost(fmt.Sprintf("VM %s's lease key no longer carries this host's lease (an operator's reset?)", vmID))
		}
	}
	return true
}

// State reads the VM's record as the File arbiter reports it: the newest
// epoch, its fence, its holder, and whether it was released.
func (a *Arbiter) State(ctx context.Context, vmID string) (arbiter.State, error) {
	if err := checkVMID(vmID); err != nil {
		return arbiter.State{}, err
	}
	st, _, err := a.state(ctx, vmID)
	return st, err
}

// state also returns the lease key's lease (0 when absent).
func (a *Arbiter) state(ctx context.Context, vmID string) (arbiter.State, clientv3.LeaseID, error) {
	epochKey, relKey := a.key(vmID, "epoch"), a.key(vmID, "released")
	resp, err := a.cli.Txn(ctx).Then(clientv3.OpGet(epochKey), clientv3.OpGet(relKey), clientv3.OpGet(a.key(vmID, "lease"))).Commit()
	if err != nil {
		return arbiter.State{}, 0, fmt.Errorf("arbiter/etcd: reading %s: %w", epochKey, err)
	}
	cur, rev, err := readRecord(resp.Responses[0].GetResponseRange().Kvs, epochKey)
	if err != nil {
		return arbiter.State{}, 0, err
	}
	st := arbiter.State{Epoch: cur.Epoch, Fence: uint64(rev), Holder: cur.Holder}
	if kvs := resp.Responses[1].GetResponseRange().Kvs; len(kvs) > 0 {
		var rel releasedRecord
		if json.Unmarshal(kvs[0].Value, &rel) == nil && rel.Epoch == st.Epoch && rel.Fence == st.Fence {
			st.Released, st.Holder = true, rel.Holder
		}
	}
	var lease clientv3.LeaseID
	if kvs := resp.Responses[2].GetResponseRange().Kvs; len(kvs) > 0 {
		lease = clientv3.LeaseID(kvs[0].Lease)
	}
	return st, lease, nil
}

// Release records that this host, primary of vmID in epoch with fence,
// stopped cleanly, and gives up its lease on the VM (see the package
// doc). false with a nil error: the record moved on or names another host.
func (a *Arbiter) Release(ctx context.Context, vmID string, epoch, fence uint64) (bool, error) {
	if err := checkVMID(vmID); err != nil {
		return false, err
	}
	st, _, err := a.state(ctx, vmID)
	if err != nil {
		return false, err
	}
	if st.Epoch != epoch || st.Fence != fence || st.Holder != a.holder || st.Released {
		return false, nil
	}
	val, _ := json.Marshal(releasedRecord{Epoch: epoch, Fence: fence, Holder: a.holder})
	tr, err := a.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(a.key(vmID, "epoch")), "=", int64(fence))).
		Then(clientv3.OpPut(a.key(vmID, "released"), string(val)), clientv3.OpDelete(a.key(vmID, "lease"))).
		Commit()
	if err != nil {
		return false, fmt.Errorf("arbiter/etcd: recording the clean stop of VM %s: %w", vmID, err)
	}
	a.mu.Lock()
	delete(a.held, vmID)
	id, none := a.lease, len(a.held) == 0
	if none {
		a.holding.Store(false)
		a.lease = 0
		a.deadline.Store(0)
	}
	a.mu.Unlock()
	if none && id != 0 {
		if _, err := a.cli.Revoke(ctx, id); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			a.log.Warn("could not revoke the arbiter's lease; it runs out by itself", "err", err)
		}
	}
	return tr.Succeeded, nil
}

// ErrRunning is wrapped by Reset's and Adopt's errors while a daemon of
// the VM runs.
var ErrRunning = arbiter.ErrRunning

// Reset marks the newest epoch released with no holder, so that any host
// may take the next one by itself; refused while a daemon of the VM runs.
// It returns the state as it was.
func (a *Arbiter) Reset(ctx context.Context, vmID string) (arbiter.State, error) {
	return a.releaseTo(ctx, vmID, "")
}

// Adopt is Reset naming host as the one that may take the next epoch.
func (a *Arbiter) Adopt(ctx context.Context, vmID, host string) (arbiter.State, error) {
	return a.releaseTo(ctx, vmID, host)
}

func (a *Arbiter) releaseTo(ctx context.Context, vmID, holder string) (arbiter.State, error) {
	if err := checkVMID(vmID); err != nil {
		return arbiter.State{}, err
	}
	st, _, err := a.state(ctx, vmID)
	if err != nil || st.Epoch == 0 || st.Released && st.Holder == holder {
		return st, err
	}
	runPrefix := a.key(vmID, "running/")
	val, _ := json.Marshal(releasedRecord{Epoch: st.Epoch, Fence: st.Fence, Holder: holder})
	tr, err := a.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(a.key(vmID, "epoch")), "=", int64(st.Fence)),
			clientv3.Compare(clientv3.CreateRevision(runPrefix).WithPrefix(), "=", 0)).
		Then(clientv3.OpPut(a.key(vmID, "released"), string(val))).
		Else(clientv3.OpGet(runPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())).
		Commit()
	if err != nil {
		return st, fmt.Errorf("arbiter/etcd: %w", err)
	}
	if !tr.Succeeded {
		if kvs := tr.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
			return st, fmt.Errorf("arbiter/etcd: %w (%s exists): stop every ftvm daemon of VM %s first, on every host", ErrRunning, kvs[0].Key, vmID)
		}
		return st, fmt.Errorf("arbiter/etcd: VM %s's record changed meanwhile; try again", vmID)
	}
	return st, nil
}

// Running marks a daemon of vmID as running on this host until the
// returned closer is closed: a key under a lease of its own that the
// client keeps alive (it goes TTL after the process dies). It refuses
// when a daemon of the VM runs under this host name already, after
// waiting up to a TTL for one that died to drop out.
func (a *Arbiter) Running(vmID string) (io.Closer, error) {
	if err := checkVMID(vmID); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), a.ttl+5*time.Second)
	defer cancel()
	key := a.key(vmID, "running/"+a.holder)
	// A daemon of this host that died a moment ago (restarted at once)
	// leaves its key until its lease runs out: wait that long for it.
	if resp, err := a.cli.Get(ctx, key); err != nil {
		return nil, fmt.Errorf("arbiter/etcd: reading %s: %w", key, err)
	} else if len(resp.Kvs) > 0 {
		a.log.Info("a daemon of this VM ran as this host a moment ago: waiting for its lease to run out", "key", key, "ttl", a.ttl)
		wctx, wcancel := context.WithTimeout(ctx, a.ttl+time.Second)
		a.watchGone(wctx, key, resp.Kvs[0], resp.Header.Revision)
		wcancel()
	}
	g, err := a.cli.Grant(ctx, int64(a.ttl/time.Second))
	if err != nil {
		return nil, fmt.Errorf("arbiter/etcd: granting the running lease: %w", err)
	}
	val, _ := json.Marshal(map[string]any{"pid": os.Getpid(), "since": time.Now().UTC().Format(time.RFC3339Nano)})
	tr, err := a.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(val), clientv3.WithLease(g.ID))).Commit()
	if err == nil && !tr.Succeeded {
		err = fmt.Errorf("a daemon of VM %s already runs as host %q (%s exists; it goes %v after that daemon dies)", vmID, a.holder, key, a.ttl)
	}
	if err != nil {
		a.cli.Revoke(context.Background(), g.ID)
		return nil, fmt.Errorf("arbiter/etcd: %w", err)
	}
	kctx, kcancel := context.WithCancel(context.Background())
	ch, err := a.cli.KeepAlive(kctx, g.ID)
	if err != nil {
		kcancel()
		a.cli.Revoke(context.Background(), g.ID)
		return nil, fmt.Errorf("arbiter/etcd: keeping the running lease alive: %w", err)
	}
	go func() {
		for range ch {
		}
	}()
	return &running{cli: a.cli, id: g.ID, cancel: kcancel}, nil
}

// DaemonRunning reports whether a daemon of vmID runs on any host (a
// running/ key of the VM exists).
func (a *Arbiter) DaemonRunning(ctx context.Context, vmID string) (bool, error) {
	if err := checkVMID(vmID); err != nil {
		return false, err
	}
	resp, err := a.cli.Get(ctx, a.key(vmID, "running/"), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return false, fmt.Errorf("arbiter/etcd: %w", err)
	}
	return resp.Count > 0, nil
}

// Where names the VM's keys, for messages.
func (a *Arbiter) Where(vmID string) string { return "etcd keys " + a.key(vmID, "*") }

// runningRevokeTimeout bounds the revocation of the running key's lease
// when a daemon stops.
const runningRevokeTimeout = 500 * time.Millisecond

type running struct {
	cli    *clientv3.Client
	id     clientv3.LeaseID
	cancel context.CancelFunc
	once   sync.Once
}

func (r *running) Close() error {
	var err error
	r.once.Do(func() {
		r.cancel()
		// Best effort: the lease runs out by itself if etcd is away.
		ctx, cancel := context.WithTimeout(context.Background(), runningRevokeTimeout)
		defer cancel()
		_, err = r.cli.Revoke(ctx, r.id)
	})
	return err
}

// Close stops the keep-alive. It revokes nothing: a VM still held stays
// held until the lease runs out (Release gives it up at once).
func (a *Arbiter) Close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	keeping := a.keeping
	close(a.stop)
	a.mu.Unlock()
	if keeping {
		<-a.done
	}
	return nil
}
