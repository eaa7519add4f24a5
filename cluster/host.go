package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Launch is what a host gives its Runner to start one daemon.
type Launch struct {
	VM   string
	Role string // "primary" or "secondary"
	Spec VMSpec
	// Listen is host:port this daemon listens on for its secondary.
	Listen string
	// Peer and PeerAddr are the primary a secondary joins: its host name
	// (its TLS name) and host:port.
	Peer, PeerAddr string
	// AllowPeers are the other hosts of the pool when the daemon starts:
	// any of them may join it as its secondary once it is primary.
	AllowPeers []string
}

// Runner starts daemons (cmd/ftvm runs `ftvm primary|secondary`
// processes; tests may run anything that behaves the same).
type Runner interface {
	Start(l Launch) (Daemon, error)
}

// Daemon is one running daemon of a VM on this host.
type Daemon interface {
	// Done is closed when the daemon has exited; Err is then why.
	Done() <-chan struct{}
	Err() error
	// Stop asks it to stop (SIGTERM), and kills it if it has not after a
	// grace period; it returns once it has exited.
	Stop()
	// State asks it for its state (its control socket).
	State(ctx context.Context) (DaemonState, error)
}

// Timing of a host.
const (
	// statePollInterval is how often a host asks its daemons for their
	// state and reads the pool again without a watch event.
	statePollInterval = 100 * time.Millisecond
	// restartBackoff is how long a host waits after a daemon of a VM
	// exited before it starts one again for that VM.
	restartBackoff = time.Second
	stateTimeout   = time.Second
	// renewRetry is how long a host that lost its lease waits between
	// tries to take a new one and register again.
	renewRetry = 250 * time.Millisecond
)

// Host is one host of the pool: it registers itself, places VMs when it
// is elected to, and runs the daemons its VMs' placements name it for.
type Host struct {
	Client *clientv3.Client
	Keys   Keys
	Name   string
	Info   HostInfo
	// Session is the host's lease: its registration, its daemons' state
	// keys and its placement leadership all go with it.
	Session *concurrency.Session
	// NewSession takes a new lease of the same TTL when Session is lost
	// (cmd/ftvm: concurrency.NewSession with --lease-ttl). Nil: a lost
	// session stops the host.
	NewSession func(context.Context) (*concurrency.Session, error)
	Runner     Runner
	Log        *slog.Logger

	daemons map[string]*running  // by VM; the Run goroutine only
	exited  map[string]time.Time // when each VM's daemon last exited
}

type running struct {
	d       Daemon
	role    string // the role it was started in
	allow   string // its AllowPeers, comma-separated
	state   DaemonState
	stateOK bool // state has been published
}

// Run registers the host and runs until ctx ends, then stops its daemons
// and deregisters. A lost session (etcd unreachable for the lease's TTL,
// or this process starved that long) does not stop the daemons: each
// holds its own arbiter lease, which is what keeps two primaries apart,
// and a daemon that lost that one halts by itself. The host takes a new
// session from NewSession, registers again and goes on; meanwhile the
// pool counts it dead, so placement may move its secondaries elsewhere
// (the host then stops them), but a primary that still holds its lease
// keeps serving. Without NewSession a lost session stops the daemons and
// Run returns an error.
func (h *Host) Run(ctx context.Context) error {
	if err := CheckName("host name", h.Name); err != nil {
		return err
	}
	h.daemons = map[string]*running{}
	h.exited = map[string]time.Time{}
	h.Info.Since = time.Now().UTC().Format(time.RFC3339)
	if err := h.register(ctx); err != nil {
		return err
	}
	h.Log.Info("host registered in the pool", "host", h.Name, "addr", h.Info.Addr, "slots", h.Info.Slots, "key", h.Keys.Host(h.Name))
	defer h.stopAll()
	for {
		err := h.serve(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if h.NewSession == nil {
			return err
		}
		h.Log.Warn("this host's etcd lease is lost (the pool counts the host dead meanwhile); its daemons keep running under their own arbiter leases; taking a new lease and registering again", "err", err)
		if err := h.renew(ctx); err != nil {
			return nil // ctx ended
		}
		h.Log.Info("host registered in the pool again", "host", h.Name, "lease", fmt.Sprintf("%x", h.Session.Lease()))
	}
}

// errSessionLost is serve's error when the host's session ends.
var errSessionLost = errors.New("the host's etcd session (its lease) is lost")

// serve campaigns for placement and reconciles this host's daemons with
// the pool until ctx ends (nil) or the session is lost.
func (h *Host) serve(ctx context.Context) error {
	sess := h.Session
	placeCtx, stopPlacing := context.WithCancel(ctx)
	placed := make(chan struct{})
	go func() {
		defer close(placed)
		pl := &Placer{Client: h.Client, Keys: h.Keys, Name: h.Name, Session: sess, Log: h.Log}
		for {
			err := pl.Run(placeCtx)
			if placeCtx.Err() != nil {
				return
			}
			select {
			case <-sess.Done():
				return
			case <-placeCtx.Done():
				return
			case <-time.After(resyncInterval):
				h.Log.Warn("placement stopped; campaigning again", "err", err)
			}
		}
	}()
	defer func() {
		stopPlacing()
		<-placed
	}()
	w := h.Client.Watch(clientv3.WithRequireLeader(ctx), h.Keys.prefix(), clientv3.WithPrefix())
	tick := time.NewTicker(statePollInterval)
	defer tick.Stop()
	for {
		if p, err := Read(ctx, h.Client, h.Keys); err != nil {
			if ctx.Err() == nil {
				h.Log.Warn("reading the pool", "err", err)
			}
		} else {
			h.reconcile(ctx, p)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-sess.Done():
			if h.NewSession == nil {
				return errors.New("the host's etcd session (its lease) is lost: its daemons are stopped, the pool places their VMs elsewhere")
			}
			return errSessionLost
		case _, ok := <-w:
			if !ok {
				w = h.Client.Watch(clientv3.WithRequireLeader(ctx), h.Keys.prefix(), clientv3.WithPrefix())
			}
		case <-tick.C:
		}
	}
}

// renew takes a new session and registers the host under it, retrying
// until both work or ctx ends. The old lease is revoked first, so that
// its keys (the host's registration, its daemons' states) go at once
// rather than at the end of the TTL; every daemon's state is put again
// under the new one.
func (h *Host) renew(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, time.Second)
	_, _ = h.Client.Revoke(rctx, h.Session.Lease())
	cancel()
	for {
		sess, err := h.NewSession(ctx)
		if err == nil {
			h.Session = sess
			for _, r := range h.daemons {
				r.stateOK = false
			}
			if err = h.register(ctx); err == nil {
				return nil
			}
			sess.Close()
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		h.Log.Warn("registering this host again", "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(renewRetry):
		}
	}
}

func (h *Host) register(ctx context.Context) error {
	h.Info.Free = h.Info.Slots - len(h.daemons)
	b, err := json.Marshal(h.Info)
	if err != nil {
		return err
	}
	key := h.Keys.Host(h.Name)
	resp, err := h.Client.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(b), clientv3.WithLease(h.Session.Lease()))).
		Commit()
	if err != nil {
		return fmt.Errorf("registering host %s in etcd: %w", h.Name, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("a host named %s is already registered in the pool (%s): give each host its own --name, or wait for the other's lease to run out", h.Name, key)
	}
	return nil
}

// reconcile starts the daemons the placements name this host for, stops
// the others, and publishes their states.
func (h *Host) reconcile(ctx context.Context, p *Pool) {
	exited := h.exited
	for id, r := range h.daemons {
		select {
		case <-r.d.Done():
			h.Log.Warn("a daemon exited", "vm", id, "started_as", r.role, "err", r.d.Err())
			delete(h.daemons, id)
			exited[id] = time.Now()
			h.deleteState(ctx, id)
		default:
		}
	}
	for id, r := range h.daemons {
		v := p.VMs[id]
		if v == nil || v.Place == nil || (v.Place.Primary != h.Name && v.Place.Secondary != h.Name) {
			h.Log.Info("the VM is no longer placed on this host: stopping its daemon", "vm", id)
			r.d.Stop()
			delete(h.daemons, id)
			h.deleteState(ctx, id)
		}
	}
	for _, id := range p.VMIDs() {
		v := p.VMs[id]
		if v.Place == nil || h.daemons[id] != nil || time.Since(exited[id]) < restartBackoff {
			continue
		}
		l := Launch{VM: id, Spec: v.Spec, Listen: net.JoinHostPort(h.Info.Addr, strconv.Itoa(v.Spec.Port))}
		for _, other := range p.HostNames() {
			if other != h.Name {
				l.AllowPeers = append(l.AllowPeers, other)
			}
		}
		switch h.Name {
		case v.Place.Primary:
			l.Role = "primary"
		case v.Place.Secondary:
			prim, ok := p.Hosts[v.Place.Primary]
			if !ok {
				continue // its primary's host is gone: wait for a new placement
			}
			l.Role, l.Peer, l.PeerAddr = "secondary", v.Place.Primary, net.JoinHostPort(prim.Addr, strconv.Itoa(v.Spec.Port))
		default:
			continue
		}
		d, err := h.Runner.Start(l)
		if err != nil {
			h.Log.Error("starting a daemon", "vm", id, "role", l.Role, "err", err)
			exited[id] = time.Now()
			continue
		}
		h.Log.Info("started a daemon", "vm", id, "role", l.Role, "peer", l.Peer)
		h.daemons[id] = &running{d: d, role: l.Role, allow: strings.Join(l.AllowPeers, ",")}
	}
	for id, r := range h.daemons {
		sctx, cancel := context.WithTimeout(ctx, stateTimeout/2)
		s, err := r.d.State(sctx)
		cancel()
		if err != nil {
			s = DaemonState{Role: "starting"}
		}
		s.AllowPeers = r.allow
		if r.stateOK && s == r.state {
			continue
		}
		b, _ := json.Marshal(s)
		pctx, cancel := context.WithTimeout(ctx, stateTimeout)
		_, err = h.Client.Put(pctx, h.Keys.At(id, h.Name), string(b), clientv3.WithLease(h.Session.Lease()))
		cancel()
		if err == nil {
			r.state, r.stateOK = s, true
		}
	}
	if free := h.Info.Slots - len(h.daemons); free != h.Info.Free {
		h.Info.Free = free
		b, _ := json.Marshal(h.Info)
		pctx, cancel := context.WithTimeout(ctx, stateTimeout)
		if _, err := h.Client.Put(pctx, h.Keys.Host(h.Name), string(b), clientv3.WithLease(h.Session.Lease())); err != nil {
			h.Info.Free = -1 // publish again next time
		}
		cancel()
	}
}

func (h *Host) deleteState(ctx context.Context, vm string) {
	dctx, cancel := context.WithTimeout(ctx, stateTimeout)
	defer cancel()
	_, _ = h.Client.Delete(dctx, h.Keys.At(vm, h.Name))
}

func (h *Host) stopAll() {
	for id, r := range h.daemons {
		r.d.Stop()
		delete(h.daemons, id)
	}
}
