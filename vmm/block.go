package vmm

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

var errBlockRange = errors.New("block request past the end of the device")

// blockDevice is a disk backed by a file: 512-byte sectors, as many as fit
// in the file when the VM is created. Writes are made durable (fdatasync)
// before the request returns or, for a held write, before Release returns.
// Held writes stay visible to later reads (read-your-writes) until they are
// released or dropped.
type blockDevice struct {
	f       *os.File // nil: a VM without a disk (SIZE answers 0)
	sectors uint64

	mu      sync.Mutex // guards pending and the file against releasers
	pending []*Output  // held writes, oldest first
}

func newBlock(f *os.File) (*blockDevice, error) {
	b := &blockDevice{f: f}
	if f == nil {
		return b, nil
	}
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("block device: %w", err)
	}
	b.sectors = uint64(st.Size()) / BlockSectorBytes
	return b, nil
}

func (b *blockDevice) inRange(sector uint64, n uint32) bool {
	count := uint64(n) / BlockSectorBytes
	return sector <= b.sectors && count <= b.sectors-sector
}

func (b *blockDevice) input(e *Exit) (Result, error) {
	if e.Op == OpBlockSize {
		return Result{Value: b.sectors}, nil
	}
	if !b.inRange(e.Arg, e.Len) {
		return Result{Status: StatusRange}, nil
	}
	buf := make([]byte, e.Len)
	off := int64(e.Arg * BlockSectorBytes)
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, err := b.f.ReadAt(buf, off); err != nil {
		return Result{Status: StatusIO}, nil
	}
	for _, o := range b.pending {
		overlay(buf, off, o.Data, int64(o.Arg*BlockSectorBytes))
	}
	return Result{Data: buf}, nil
}

// overlay copies the part of src (at byte offset srcOff) that overlaps dst
// (at dstOff) into dst.
func overlay(dst []byte, dstOff int64, src []byte, srcOff int64) {
	lo := max(dstOff, srcOff)
	hi := min(dstOff+int64(len(dst)), srcOff+int64(len(src)))
	if lo < hi {
		copy(dst[lo-dstOff:hi-dstOff], src[lo-srcOff:hi-srcOff])
	}
}

func (b *blockDevice) check(e *Exit) int32 {
	if !b.inRange(e.Arg, e.Len) {
		return StatusRange
	}
	return StatusOK
}

func (b *blockDevice) deliver(_ uint32, sector uint64, data []byte) error {
	if !b.inRange(sector, uint32(len(data))) {
		return errBlockRange
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, err := b.f.WriteAt(data, int64(sector*BlockSectorBytes)); err != nil {
		return fmt.Errorf("block write at sector %d: %w", sector, err)
	}
	if err := unix.Fdatasync(int(b.f.Fd())); err != nil {
		return fmt.Errorf("block fdatasync: %w", err)
	}
	return nil
}

func (b *blockDevice) hold(o *Output) {
	b.mu.Lock()
	b.pending = append(b.pending, o)
	b.mu.Unlock()
}

func (b *blockDevice) unhold(o *Output) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, p := range b.pending {
		if p == o {
			b.pending = append(b.pending[:i], b.pending[i+1:]...)
			return
		}
	}
}

const blockStateVersion = 1

// saveState records the disk's size. The disk's contents are not part of
// a snapshot (like a real VM's disk they live apart), so a snapshot cannot
// be taken while writes are held: their data would be in neither.
func (b *blockDevice) saveState() ([]byte, error) {
	b.mu.Lock()
	n := len(b.pending)
	b.mu.Unlock()
	if n > 0 {
		return nil, fmt.Errorf("block device has %d held writes: release or drop them before taking a snapshot", n)
	}
	var body [8]byte
	le.PutUint64(body[:], b.sectors)
	return stateWithVersion(blockStateVersion, body[:]), nil
}

func (b *blockDevice) restoreState(s []byte) error {
	body, err := stateBody("block", s, blockStateVersion, 8)
	if err != nil {
		return err
	}
	if n := le.Uint64(body); n != b.sectors {
		return fmt.Errorf("the snapshot's block device has %d sectors, this VM's has %d: attach the same disk image", n, b.sectors)
	}
	return nil
}
