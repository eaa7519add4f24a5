package sim

import "encoding/binary"

// guest is the simulated VM: a deterministic state machine that meets the
// world only through exits. Every exit is either an input (the world gives
// it bytes) or an output (it emits bytes derived from its whole history), so
// two guests that emit the same output have had the same execution. Between
// exits it writes its memory, a few pages (run).
type guest struct {
	exit   uint64 // exits completed
	outIdx uint64 // outputs emitted
	h      uint64 // digest of everything that happened
	pages  [guestPages]uint64

	// The VMM's bookkeeping, not the guest's state: the snapshot this VM
	// last took or restored (its token; 0: none) and the pages written
	// since (bit p: page p), as KVM's dirty log keeps them.
	base  uint64
	dirty uint64
}

// guestPages is the guest's memory, in pages of 8 bytes; hotPages of them
// take most writes, as a working set does, so that an increment holds
// fewer pages than the memory.
const (
	guestPages = 16
	hotPages   = 4
)

// guestStateBytes is the size of snapshot's encoding.
const guestStateBytes = 24 + 8*guestPages

// Output data layout: u64 output index, u64 state digest, u16 device.
const outputBytes = 18

// persistentDevice is the guest's disk: a secondary keeps its own copy of
// what the guest wrote to it (lockstep.Config.Persistent).
const persistentDevice = 3

func mix(h, v uint64) uint64 {
	h ^= v + 0x9e3779b97f4a7c15 + (h << 6) + (h >> 2)
	h ^= h >> 31
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 29
	return h
}

// next says what the guest's next exit is: an input of some kind, or an
// output on some device.
func (g *guest) next() (isOutput bool, kindOrDevice uint16) {
	v := mix(g.h, g.exit)
	return v%3 == 0, uint16(v>>8) % 4
}

func (g *guest) applyInput(data []byte) {
	for len(data) >= 8 {
		g.h = mix(g.h, binary.LittleEndian.Uint64(data))
		data = data[8:]
	}
	for _, c := range data {
		g.h = mix(g.h, uint64(c))
	}
	g.exit++
}

func (g *guest) peekOutput(device uint16) []byte {
	b := binary.LittleEndian.AppendUint64(nil, g.outIdx)
	b = binary.LittleEndian.AppendUint64(b, g.h)
	return binary.LittleEndian.AppendUint16(b, device)
}

func (g *guest) commitOutput() {
	g.outIdx++
	g.h = mix(g.h, 0x07)
	g.exit++
}

// run is the guest running up to its next exit: it writes a page, now
// and then two, chosen from its state, mostly among the hot ones. It
// depends on the state alone, so running again to an exit the node held
// back writes the same.
func (g *guest) run() {
	v := mix(g.h, g.exit^0x7a6e)
	p := v % hotPages
	if v>>60 == 0 {
		p = (v >> 8) % guestPages
	}
	g.write(p, v)
	if v>>56&3 == 0 {
		g.write((v>>16)%guestPages, v^g.exit)
	}
}

func (g *guest) write(p, v uint64) {
	g.pages[p] = v
	g.dirty |= 1 << p
}

// perturb stands in for RDTSC-like nondeterminism the log did not capture.
func (g *guest) perturb(v uint64) { g.h = mix(g.h, v|1) }

// snapshot is the guest's whole state (not the VMM's bookkeeping), which
// the resync checker compares: exit, output index, digest, every page.
func (g *guest) snapshot() []byte {
	b := make([]byte, 0, guestStateBytes)
	b = binary.LittleEndian.AppendUint64(b, g.exit)
	b = binary.LittleEndian.AppendUint64(b, g.outIdx)
	b = binary.LittleEndian.AppendUint64(b, g.h)
	for _, p := range g.pages {
		b = binary.LittleEndian.AppendUint64(b, p)
	}
	return b
}

func outputIndex(data []byte) (uint64, bool) {
	if len(data) != outputBytes {
		return 0, false
	}
	return binary.LittleEndian.Uint64(data), true
}
