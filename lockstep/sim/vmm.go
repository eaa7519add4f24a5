package sim

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"

	"github.com/ftvm/ftvm/lockstep"
)

// The simulator's VMM side of checkpoints, as the agent and vmm do them
// for a real VM: every snapshot taken or restored becomes the VM's base
// (a token, unique in the run) and clears its dirty pages. A secondary's
// resync request carries its base and dirty pages (Config.ResyncBase);
// a primary standing on the same base answers with an increment holding
// the pages either side dirtied since, and the secondary applies it onto
// its own pages only if it covers every page it dirtied, else the
// restore fails (Node.CheckpointRestoreFailed) and a full checkpoint
// follows.
//
// A snapshot's data, all integers little-endian:
//
//	u8 kind (1 full, 2 increment), u64 token, u64 base (an increment's; 0 for full),
//	u64 exit, u64 output index, u64 digest, u64 page mask, 8 bytes per page in the mask
//
// then, for a full one (which carries every page), filler (padBytes): a
// full checkpoint costs a VM's memory, an increment its pages.
const (
	snapFull      = 1
	snapIncrement = 2
	snapFixed     = 1 + 8 + 8 + 8 + 8 + 8 + 8
	baseBytes     = 16 // a resync base: u64 token, u64 dirty page mask
	allPages      = ^uint64(0) >> (64 - guestPages)
)

// Why a VMM refuses to restore an increment (not a harness fault).
var (
	errBaseMismatch = errors.New("sim: increment over another base than this VM's")
	errNotCovered   = errors.New("sim: increment lacks a page this VM dirtied since its base")
	errNoVM         = errors.New("sim: increment with no VM to apply it to")
	errPlanted      = errors.New("sim: restore failed (planted)")
)

// resyncBase is a secondary's Config.ResyncBase: its VM's base and dirty
// pages, nil when it has no base.
func resyncBase(g *guest) []byte {
	if g == nil || g.base == 0 {
		return nil
	}
	return binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(nil, g.base), g.dirty)
}

// takeSnapshot makes h's checkpoint for c: an increment over c.Base when
// h's VM stands on that base, else a full one. It becomes h's base.
func (s *Sim) takeSnapshot(h *host, c lockstep.Checkpoint) []byte {
	g := h.g
	kind, base, mask := uint8(snapFull), uint64(0), allPages
	if len(c.Base) == baseBytes && !c.Full && !c.Live && !c.Chain {
		if b := binary.LittleEndian.Uint64(c.Base); b != 0 && b == g.base {
			other := binary.LittleEndian.Uint64(c.Base[8:])
			kind, base, mask = snapIncrement, b, g.dirty|other
			if only := g.dirty &^ other; s.opts.Bugs.IncrementPageShort && only != 0 {
				// The planted bug: the increment leaves out the last
				// page only this side dirtied.
				mask &^= 1 << (63 - bits.LeadingZeros64(only))
			}
		}
	}
	s.nextToken++
	g.base, g.dirty = s.nextToken, 0
	b := make([]byte, 0, snapFixed+8*guestPages+s.padBytes())
	b = append(b, kind)
	for _, v := range []uint64{g.base, base, g.exit, g.outIdx, g.h, mask} {
		b = binary.LittleEndian.AppendUint64(b, v)
	}
	for p := range guestPages {
		if mask&(1<<p) != 0 {
			b = binary.LittleEndian.AppendUint64(b, g.pages[p])
		}
	}
	if kind == snapFull {
		for i := range s.padBytes() {
			b = append(b, byte(i))
		}
	}
	return b
}

// restoreSnapshot restores checkpoint data onto h: a full one into a new
// VM, an increment onto h's. It returns the VM restored and whether the
// data was an increment; a refusal (errBaseMismatch, errNotCovered,
// errNoVM) leaves h's VM as it was, any other error is data the
// simulator did not make.
func (s *Sim) restoreSnapshot(h *host, b []byte) (*guest, bool, error) {
	if len(b) < snapFixed {
		return nil, false, fmt.Errorf("sim: checkpoint of %d bytes is shorter than a snapshot's header", len(b))
	}
	kind := b[0]
	u := func(i int) uint64 { return binary.LittleEndian.Uint64(b[1+8*i:]) }
	token, base, mask := u(0), u(1), u(5)
	body := b[snapFixed:]
	n := 8 * bits.OnesCount64(mask)
	switch {
	case kind != snapFull && kind != snapIncrement:
		return nil, false, fmt.Errorf("sim: snapshot kind %d", kind)
	case mask&^allPages != 0 || token == 0:
		return nil, false, fmt.Errorf("sim: snapshot mask %#x or token %d malformed", mask, token)
	case kind == snapFull && (mask != allPages || base != 0):
		return nil, false, fmt.Errorf("sim: full snapshot with mask %#x and base %d", mask, base)
	case len(body) < n:
		return nil, false, fmt.Errorf("sim: snapshot of %d pages has %d bytes of them", n/8, len(body))
	}
	var g *guest
	if kind == snapFull {
		pad := body[n:]
		if len(pad) != s.padBytes() {
			return nil, false, fmt.Errorf("sim: full snapshot padded with %d bytes, want %d", len(pad), s.padBytes())
		}
		for i, v := range pad {
			if v != byte(i) {
				return nil, false, fmt.Errorf("sim: checkpoint padding corrupt at byte %d", i)
			}
		}
		g = &guest{}
	} else {
		switch {
		case len(body) != n:
			return nil, true, fmt.Errorf("sim: increment of %d pages has %d bytes", n/8, len(body))
		case h.g == nil:
			return nil, true, errNoVM
		case h.g.base != base:
			return nil, true, fmt.Errorf("%w: %d, this VM's is %d", errBaseMismatch, base, h.g.base)
		case h.g.dirty&^mask != 0:
			return nil, true, fmt.Errorf("%w: pages %#x", errNotCovered, h.g.dirty&^mask)
		}
		c := *h.g
		g = &c
	}
	g.exit, g.outIdx, g.h = u(2), u(3), u(4)
	for p := range guestPages {
		if mask&(1<<p) != 0 {
			g.pages[p] = binary.LittleEndian.Uint64(body)
			body = body[8:]
		}
	}
	g.base, g.dirty = token, 0
	return g, kind == snapIncrement, nil
}

// padBytes is the filler after a full snapshot's pages: a full snapshot
// is CheckpointPadBytes longer than the guest's scalars (exit, output
// index, digest), as it was before the guest had pages, where the pages
// and header fit in that.
func (s *Sim) padBytes() int { return max(0, s.opts.CheckpointPadBytes+24-snapFixed-8*guestPages) }

// refused reports whether err is a VMM's refusal of an increment (the
// protocol's business), not data the simulator did not make.
func refused(err error) bool {
	return errors.Is(err, errBaseMismatch) || errors.Is(err, errNotCovered) || errors.Is(err, errNoVM) || errors.Is(err, errPlanted)
}
