package agent

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/lockstep/wire"
	"github.com/ftvm/ftvm/vmm"
)

// checkpointHashes records, per checkpoint id, the vmm StateHash of the
// primary's VM when it took the checkpoint and of the secondary's when it
// restored it (both paused there).
type checkpointHashes struct {
	mu  sync.Mutex
	pri map[uint64][32]byte
	sec map[uint64][32]byte
	inc map[uint64]bool // restored as an increment onto the secondary's VM
	// priParts and secParts are the parts' hashes, to say where two
	// states differ.
	priParts, secParts map[uint64][]vmm.StatePart
	errs               []string
}

// differ names the parts of checkpoint id's state that differ between
// the primary's and the secondary's VM.
func (h *checkpointHashes) differ(id uint64) string {
	var out []string
	b := map[string][32]byte{}
	for _, p := range h.secParts[id] {
		b[p.Name] = p.Sum
	}
	for _, p := range h.priParts[id] {
		if sum, ok := b[p.Name]; !ok {
			out = append(out, p.Name+" (the primary's only)")
		} else if sum != p.Sum {
			out = append(out, p.Name)
		}
		delete(b, p.Name)
	}
	for name := range b {
		out = append(out, name+" (the secondary's only)")
	}
	return strings.Join(out, ", ")
}

func (h *checkpointHashes) hook(primary bool) func(id uint64, increment bool, vm VM) {
	return func(id uint64, increment bool, vm VM) {
		sum, err := vm.(*vmm.Machine).StateHash()
		parts, perr := vm.(*vmm.Machine).StateHashParts()
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.priParts == nil {
			h.priParts, h.secParts = map[uint64][]vmm.StatePart{}, map[uint64][]vmm.StatePart{}
		}
		if err == nil {
			err = perr
		}
		if err != nil {
			h.errs = append(h.errs, fmt.Sprintf("checkpoint %d: StateHash: %v", id, err))
			return
		}
		if primary {
			h.pri[id], h.priParts[id] = sum, parts
		} else {
			h.sec[id], h.secParts[id] = sum, parts
			h.inc[id] = increment
		}
	}
}

// TestKVMPairIncrementalResync runs a pair on the nondet guest, whose
// every line the secondary cannot reproduce (an RDTSC): every line is a
// divergence and a resync. After the join's full checkpoint the resyncs
// must be increments (the secondary's base goes with its request, and the
// primary stands on the same checkpoint), applied onto the secondary's
// VM; and after each the secondary's VM (memory, registers, devices, disk)
// must hash as the primary's did when it took that checkpoint.
func TestKVMPairIncrementalResync(t *testing.T) {
	image := guestImage(t, "nondet")
	const lines = 10
	cmdline := fmt.Sprintf("count=%d", lines)
	ctx, cancel := context.WithTimeout(context.Background(), testRunTimeout)
	defer cancel()
	h := &checkpointHashes{pri: map[uint64][32]byte{}, sec: map[uint64][32]byte{}, inc: map[uint64]bool{}}
	p := startPairConfig(t, ctx, lockstep.AckOnCompare, resyncTestWindow, image, cmdline, nil, func(role wire.Role, c *Config) {
		c.checkpointState = h.hook(role == wire.RolePrimary)
	})
	if err := waitErr(t, "primary", p.priErr); err != nil {
		t.Fatalf("primary: %v", err)
	}
	p.stopSecondary(t)
	if got := strings.Count(p.priOut.String(), "\n"); got < lines {
		t.Fatalf("the world saw %d lines, want at least %d: %q", got, lines, tail(p.priOut.String()))
	}
	// (The pair's positional release check does not apply: the replica
	// makes every line its own way before each resync.)
	ps, ss := p.pri.Stats(), p.sec.Stats()
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.errs) > 0 {
		t.Fatal(h.errs[0])
	}
	increments := 0
	for id, sec := range h.sec {
		pri, ok := h.pri[id]
		if !ok {
			t.Fatalf("the secondary restored checkpoint %d, which the primary never took", id)
		}
		if sec != pri {
			t.Fatalf("after restoring checkpoint %d (increment %v) the secondary's VM hashes %x, the primary's at that checkpoint %x (parts that differ: %s)", id, h.inc[id], sec[:8], pri[:8], h.differ(id))
		}
		if h.inc[id] {
			increments++
		}
	}
	// The join is full; every resync after it an increment (the primary
	// runs ahead, so one resync may cover several lines).
	if ss.Divergences < 1 || increments < 1 || increments != len(h.sec)-1 || ss.IncrementalRestores != uint64(increments) || ps.IncrementalCheckpoints != uint64(increments) {
		t.Fatalf("%d restores verified, %d of them increments; want all but the join's, counted as such: primary %+v, secondary %+v", len(h.sec), increments, ps, ss)
	}
	t.Logf("%d checkpoints restored with the primary's state hash, %d of them increments; primary %+v, secondary %+v", len(h.sec), increments, ps, ss)
}

// TestKVMPairIncrementalResyncFallsBack: a secondary that cannot restore
// a resync's increment (planted: the first one fails once its successor
// VM is made) closes that VM and asks again; the primary, still paused,
// sends a full checkpoint, which goes into a fresh VM with the primary's
// state, and the resyncs after it are increments again.
func TestKVMPairIncrementalResyncFallsBack(t *testing.T) {
	image := guestImage(t, "nondet")
	const lines = 10
	ctx, cancel := context.WithTimeout(context.Background(), testRunTimeout)
	defer cancel()
	h := &checkpointHashes{pri: map[uint64][32]byte{}, sec: map[uint64][32]byte{}, inc: map[uint64]bool{}}
	var failed []uint64
	p := startPairConfig(t, ctx, lockstep.AckOnCompare, resyncTestWindow, image, fmt.Sprintf("count=%d", lines), nil, func(role wire.Role, c *Config) {
		c.checkpointState = h.hook(role == wire.RolePrimary)
		if role == wire.RoleSecondary {
			c.failIncrement = func(id uint64) error {
				if len(failed) > 0 {
					return nil
				}
				failed = append(failed, id)
				return fmt.Errorf("planted failure of increment %d", id)
			}
		}
	})
	if err := waitErr(t, "primary", p.priErr); err != nil {
		t.Fatalf("primary: %v", err)
	}
	p.stopSecondary(t)
	ps, ss := p.pri.Stats(), p.sec.Stats()
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.errs) > 0 {
		t.Fatal(h.errs[0])
	}
	if len(failed) != 1 || ss.RestoreFailures != 1 {
		t.Fatalf("planted failures %v, secondary counted %d restore failures: want one of each", failed, ss.RestoreFailures)
	}
	if _, ok := h.sec[failed[0]]; ok {
		t.Fatalf("increment %d failed and still counts as restored", failed[0])
	}
	// The checkpoint after the failed one is the full one that answers it.
	next := failed[0] + 1
	pri, ok1 := h.pri[next]
	sec, ok2 := h.sec[next]
	switch {
	case !ok1 || !ok2:
		t.Fatalf("no checkpoint %d both taken and restored after increment %d failed", next, failed[0])
	case h.inc[next]:
		t.Fatalf("checkpoint %d after the failed increment was an increment too, want a full one", next)
	case pri != sec:
		t.Fatalf("after the full checkpoint %d the secondary's VM hashes %x, the primary's %x (parts that differ: %s)", next, sec[:8], pri[:8], h.differ(next))
	}
	later := 0
	for id, sec := range h.sec {
		if pri := h.pri[id]; sec != pri {
			t.Fatalf("after checkpoint %d the secondary's VM hashes %x, the primary's %x (parts that differ: %s)", id, sec[:8], pri[:8], h.differ(id))
		}
		if id > next && h.inc[id] {
			later++
		}
	}
	if later == 0 {
		t.Fatalf("no increment after the full checkpoint %d: primary %+v, secondary %+v", next, ps, ss)
	}
	t.Logf("increment %d failed, full checkpoint %d followed, %d increments after it; primary %+v, secondary %+v", failed[0], next, later, ps, ss)
}

// TestKVMPairResyncBaseFallsBackToFull: a base the primary cannot read,
// or one of another checkpoint than its VM stands on (vmm.ErrBaseMismatch),
// gets a full checkpoint, as no base does, and the pair goes on.
func TestKVMPairResyncBaseFallsBackToFull(t *testing.T) {
	image := guestImage(t, "nondet")
	other, err := (&vmm.DirtySet{ChainID: 0x5eed, Seq: 1, MemSize: testMemBytes, Pages: []uint64{1, 2, 3}}).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		base []byte
	}{{"unreadable", []byte("not a dirty set")}, {"another base", other}} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), testRunTimeout)
			defer cancel()
			h := &checkpointHashes{pri: map[uint64][32]byte{}, sec: map[uint64][32]byte{}, inc: map[uint64]bool{}}
			p := startPairConfig(t, ctx, lockstep.AckOnCompare, 0, image, "count=6", nil, func(role wire.Role, cfg *Config) {
				cfg.checkpointState = h.hook(role == wire.RolePrimary)
				cfg.Node.ResyncBase = func() []byte { return c.base }
			})
			if err := waitErr(t, "primary", p.priErr); err != nil {
				t.Fatalf("primary: %v", err)
			}
			p.stopSecondary(t)
			ps, ss := p.pri.Stats(), p.sec.Stats()
			if ss.Divergences < 1 || ss.Restores < 2 || ps.IncrementalCheckpoints != 0 || ss.IncrementalRestores != 0 {
				t.Fatalf("want full resyncs only: primary %+v, secondary %+v", ps, ss)
			}
			h.mu.Lock()
			defer h.mu.Unlock()
			for id, sec := range h.sec {
				if pri := h.pri[id]; sec != pri {
					t.Fatalf("after checkpoint %d the secondary's VM hashes %x, the primary's %x (parts that differ: %s)", id, sec[:8], pri[:8], h.differ(id))
				}
			}
		})
	}
}

// resyncTestWindow bounds how far the primary's log may run ahead of the
// secondary in the incremental tests: with the default window the primary
// could make every line before the secondary found its first divergence,
// leaving no resync after it to check.
const resyncTestWindow = 4
