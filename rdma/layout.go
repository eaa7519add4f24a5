package rdma

import (
	"encoding/binary"
	"fmt"
)

// The receive region's layout; doc.go describes it byte by byte.
const (
	// RegionHeaderBytes is the part of a region in front of its ring: the
	// hello block and the ack block, padded to a page.
	RegionHeaderBytes = 4096
	// helloOff is where the peer's hello block sits in this side's region.
	helloOff   = 0
	helloBytes = 32
	// ackOff is where the peer writes back its consumer cursor in the ring
	// this side sends into.
	ackOff   = 128
	ackBytes = 8
	// ringOff is where the ring starts.
	ringOff = RegionHeaderBytes
	// frameHeaderBytes: type, flags and two zero bytes in front of a
	// frame's payload inside a record, so that the payload starts 8-byte
	// aligned.
	frameHeaderBytes = 4

	// MinRingBytes and MaxRingBytes bound a ring's size (a power of two).
	// The top is 2^29 because a signal carries 30 bits of a cursor, and a
	// cursor moves by at most the ring's size between two signals the
	// receiver reconstructs it from.
	MinRingBytes = 4096
	MaxRingBytes = 1 << 29
	// DefaultRingBytes is a ring's size unless configured: 1 MiB, like the
	// TCP control lane's socket buffer (about 6 ms of log entries).
	DefaultRingBytes = 1 << 20

	// MaxSignalsInFlight bounds the signals (WriteImm) a producer has
	// posted whose records the consumer has not yet written back as
	// consumed, so that the number of signals a Link must hold unpolled
	// is bounded whatever the frame sizes.
	MaxSignalsInFlight = 256
	// MaxUnpolledSignals is how many signals a Link must be able to hold
	// between two Polls without losing one (verbs: receive queue and
	// completion queue depth; shm: its signal queue): MaxSignalsInFlight
	// records' signals, plus the write-backs of consumer cursors, which
	// are at most a few per MaxSignalsInFlight.
	MaxUnpolledSignals = 512

	// writebackEverySignals and the ring's size over writebackEveryDivisor
	// are how much the consumer consumes before it writes its cursor back
	// (whichever comes first). With records of at most half the ring,
	// a producer waiting for room always gets a write-back (doc.go,
	// "Flow control").
	writebackEverySignals = MaxSignalsInFlight / 4
	writebackEveryDivisor = 4
)

// helloMagic opens the hello block.
const helloMagic = "FTVMRNG1"

// ringVersion is the version of this layout; the hello block carries it.
const ringVersion = 1

// RegionBytes is the size of a region whose ring takes ringBytes: what a
// side passes to Provider.Open.
func RegionBytes(ringBytes int) int { return RegionHeaderBytes + ringBytes }

// Signals (the imm of WriteImm): the top two bits say what moved, the
// low 30 bits are the low 30 bits of the cursor.
const (
	signalTail  = 0 // a producer cursor: records up to it are placed in your ring
	signalHead  = 1 // a consumer cursor: I consumed your records up to it
	signalShift = 30
	signalMask  = 1<<signalShift - 1
)

func signal(kind uint32, cursor uint64) uint32 {
	return kind<<signalShift | uint32(cursor)&signalMask
}

// reconstruct returns the 64-bit cursor whose low 30 bits are low and
// that is the nearest at or after base.
func reconstruct(base uint64, low uint32) uint64 {
	return base + uint64((low-uint32(base))&signalMask)
}

func checkRingBytes(what string, n int) error {
	if n < MinRingBytes || n > MaxRingBytes || n&(n-1) != 0 {
		return fmt.Errorf("rdma: %s ring of %d bytes: a ring is a power of two between %d and %d bytes", what, n, MinRingBytes, MaxRingBytes)
	}
	return nil
}

func putHello(b []byte, ringBytes int, gen uint64) {
	copy(b[0:8], helloMagic)
	binary.LittleEndian.PutUint16(b[8:], ringVersion)
	binary.LittleEndian.PutUint16(b[10:], 0)
	binary.LittleEndian.PutUint32(b[12:], uint32(ringBytes))
	binary.LittleEndian.PutUint64(b[16:], gen)
	clear(b[24:helloBytes])
}

func checkHello(b []byte, ringBytes int, gen uint64) error {
	if string(b[0:8]) != helloMagic {
		return fmt.Errorf("%w: the peer's hello block has magic %q, want %q", ErrProtocol, b[0:8], helloMagic)
	}
	if v := binary.LittleEndian.Uint16(b[8:]); v != ringVersion {
		return fmt.Errorf("%w: the peer's ring layout is version %d, this host's %d", ErrProtocol, v, ringVersion)
	}
	if n := binary.LittleEndian.Uint32(b[12:]); int(n) != ringBytes {
		return fmt.Errorf("%w: the peer's hello says the ring has %d bytes; it has %d", ErrProtocol, n, ringBytes)
	}
	if g := binary.LittleEndian.Uint64(b[16:]); g != gen {
		return fmt.Errorf("%w: the peer's hello is for generation %d; this region is generation %d", ErrProtocol, g, gen)
	}
	return nil
}

// Signal kinds, exported for the conformance suite (rdma/rdmatest), which
// forges a hostile peer's signals.
const (
	SignalTail = signalTail
	SignalHead = signalHead
)

// EncodeSignal is the imm a peer posts to say that cursor of kind moved.
func EncodeSignal(kind uint32, cursor uint64) uint32 { return signal(kind, cursor) }

// RingOffset is where the ring starts in a region.
const RingOffset = ringOff
