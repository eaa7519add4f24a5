package sim

import (
	"encoding/binary"
	"errors"
)

// guest is the simulated VM: a deterministic state machine that meets the
// world only through exits. Every exit is either an input (the world gives
// it bytes) or an output (it emits bytes derived from its whole history), so
// two guests that emit the same output have had the same execution.
type guest struct {
	exit   uint64 // exits completed
	outIdx uint64 // outputs emitted
	h      uint64 // digest of everything that happened
}

const guestSnapshotBytes = 24

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

// perturb stands in for RDTSC-like nondeterminism the log did not capture.
func (g *guest) perturb(v uint64) { g.h = mix(g.h, v|1) }

func (g *guest) snapshot() []byte {
	b := binary.LittleEndian.AppendUint64(nil, g.exit)
	b = binary.LittleEndian.AppendUint64(b, g.outIdx)
	return binary.LittleEndian.AppendUint64(b, g.h)
}

func restoreGuest(b []byte) (*guest, error) {
	if len(b) != guestSnapshotBytes {
		return nil, errors.New("sim: guest snapshot has the wrong size")
	}
	return &guest{exit: binary.LittleEndian.Uint64(b), outIdx: binary.LittleEndian.Uint64(b[8:]), h: binary.LittleEndian.Uint64(b[16:])}, nil
}

func outputIndex(data []byte) (uint64, bool) {
	if len(data) != outputBytes {
		return 0, false
	}
	return binary.LittleEndian.Uint64(data), true
}
