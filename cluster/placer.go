package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// resyncInterval bounds how long the placement leader goes without
// reading the pool again when no watch event came (a lost watch, say).
const resyncInterval = time.Second

// Placer is the placement loop. Every host runs one; the one elected
// through etcd (concurrency.Election on <prefix>pool/leader, under the
// session's lease) reads the pool, writes what Plan says, and does it
// again on each change of the pool's or the arbiter's keys.
type Placer struct {
	Client *clientv3.Client
	Keys   Keys
	// Name is this host's name, the election's value.
	Name string
	// Session is the lease the leadership is held under (the host's own
	// session: when the host dies, leadership passes on after its TTL).
	Session *concurrency.Session
	Log     *slog.Logger
}

// Run campaigns, and while leader places, until ctx ends or the session
// is lost.
func (pl *Placer) Run(ctx context.Context) error {
	el := concurrency.NewElection(pl.Session, pl.Keys.Leader())
	if err := el.Campaign(ctx, pl.Name); err != nil {
		return fmt.Errorf("placement election: %w", err)
	}
	pl.Log.Info("this host places the pool's VMs (elected)", "key", string(el.Key()))
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = el.Resign(ctx)
	}()
	leader := clientv3.Compare(clientv3.CreateRevision(el.Key()), "=", el.Rev())
	for {
		p, err := Read(ctx, pl.Client, pl.Keys)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			pl.Log.Warn("placement: reading the pool", "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-pl.Session.Done():
				return errors.New("placement: the host's etcd session ended")
			case <-time.After(resyncInterval / 4):
			}
			continue
		}
		if err := pl.apply(ctx, p, leader); err != nil {
			if errors.Is(err, errNotLeader) {
				return err
			}
			pl.Log.Warn("placement", "err", err)
		}
		if err := pl.waitChange(ctx, p.Rev); err != nil {
			return err
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}

var errNotLeader = errors.New("placement: this host is no longer the elected leader")

// apply writes each change Plan gives, one transaction each: only if the
// placement is still the one read and this host still leads.
func (pl *Placer) apply(ctx context.Context, p *Pool, leader clientv3.Cmp) error {
	changes := Plan(p)
	for _, id := range sortedKeys(changes) {
		next := changes[id]
		b, err := json.Marshal(next)
		if err != nil {
			return err
		}
		key := pl.Keys.Place(id)
		resp, err := pl.Client.Txn(ctx).
			If(leader, clientv3.Compare(clientv3.ModRevision(key), "=", p.VMs[id].PlaceRev)).
			Then(clientv3.OpPut(key, string(b))).
			Commit()
		if err != nil {
			return fmt.Errorf("writing the placement of %s: %w", id, err)
		}
		if !resp.Succeeded {
			// Either the placement moved under us (read again) or we lost
			// the lead: tell which.
			g, err := pl.Client.Get(ctx, pl.Keys.Leader(), clientv3.WithFirstCreate()...)
			if err == nil && (len(g.Kvs) == 0 || string(g.Kvs[0].Value) != pl.Name) {
				return errNotLeader
			}
			return nil
		}
		was := "nothing"
		if v := p.VMs[id]; v.Place != nil {
			was = fmt.Sprintf("primary %s, secondary %q", v.Place.Primary, v.Place.Secondary)
		}
		pl.Log.Info("placed", "vm", id, "primary", next.Primary, "secondary", next.Secondary, "gen", next.Gen, "was", was)
	}
	return nil
}

// waitChange returns after the first change to the pool or the arbiter's
// keys past rev, after resyncInterval, or when ctx ends.
func (pl *Placer) waitChange(ctx context.Context, rev int64) error {
	wctx, cancel := context.WithTimeout(ctx, resyncInterval)
	defer cancel()
	w := pl.Client.Watch(clientv3.WithRequireLeader(wctx), pl.Keys.prefix(), clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	select {
	case <-w:
	case <-wctx.Done():
	case <-pl.Session.Done():
		return errors.New("placement: the host's etcd session ended")
	}
	return nil
}
