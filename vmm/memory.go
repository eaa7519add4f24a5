package vmm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/ftvm/ftvm/vmm/kvm"
)

// le is the byte order of x86 and of every format in this package.
var le = binary.LittleEndian

// PageBytes is the size of the page that dirty tracking and snapshots
// count in: KVM's dirty-log page.
const PageBytes = kvm.PageBytes

// ErrOutOfRange is wrapped by every error about a guest address or length
// that falls outside guest memory.
var ErrOutOfRange = errors.New("outside guest memory")

// Memory is the guest's RAM: guest-physical address a is buf[a]. Every
// access the VMM makes on the guest's behalf goes through Slice or Write,
// which check bounds without overflow. Writes by the VMM are not seen by
// KVM's dirty log, so Memory keeps its own bitmap of pages it wrote; a
// snapshot ORs the two.
//
// Memory is owned by the vCPU thread while the VM runs; other goroutines
// may read it only while the VM is paused, except a live snapshot
// (Machine.SnapshotLive), which copies it while the guest runs. The
// guest's own stores are not ordered against that copy, and need not be
// (what they tear, the dirty log puts in the next snapshot), but the
// VMM's are Go stores, which must not race a Go load: Write and the copy
// both hold mu.
type Memory struct {
	buf []byte
	// mu is write-held by Write, over the copy and the marking of its
	// pages, and by the taking of the dirty bits; a snapshot read-holds it
	// while it copies a batch of pages. So a VMM write lands wholly before
	// the copy of its pages or is marked for the next snapshot. It is an
	// RWMutex for its writer preference: a Write waiting for a live copy
	// gets in after the batch being copied, where a Mutex would let the
	// copier take it again and again and stall the guest's device exits
	// for the whole copy.
	mu       sync.RWMutex
	vmmDirty []uint64 // mu: one bit per page written by the VMM since the bits were last taken
}

// copyBatchPages is how many pages a snapshot copies per hold of
// Memory.mu: 64 KiB, a few microseconds, the longest a device exit
// waits for a live snapshot to let its write through.
const copyBatchPages = 16

func newMemory(buf []byte) *Memory {
	return &Memory{buf: buf, vmmDirty: make([]uint64, kvm.BitmapWords(uint64(len(buf))))}
}

// Size is the number of bytes of guest memory.
func (m *Memory) Size() uint64 { return uint64(len(m.buf)) }

// Pages is the number of 4 KiB pages of guest memory.
func (m *Memory) Pages() uint64 { return m.Size() / PageBytes }

func (m *Memory) check(addr, n uint64) error {
	size := m.Size()
	if addr > size || n > size-addr {
		return fmt.Errorf("guest range [%#x, %#x+%d) is %w (size %#x)", addr, addr, n, ErrOutOfRange, size)
	}
	return nil
}

// Slice returns the guest bytes [addr, addr+n) without copying. The slice
// aliases guest memory: the guest may change it once it runs again.
func (m *Memory) Slice(addr, n uint64) ([]byte, error) {
	if err := m.check(addr, n); err != nil {
		return nil, err
	}
	return m.buf[addr : addr+n : addr+n], nil
}

// Write copies data into guest memory at addr and marks the pages dirty.
func (m *Memory) Write(addr uint64, data []byte) error {
	if err := m.check(addr, uint64(len(data))); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(m.buf[addr:], data)
	m.markDirty(addr, uint64(len(data)))
	return nil
}

// ReadUint64 reads a little-endian u64 at addr.
func (m *Memory) ReadUint64(addr uint64) (uint64, error) {
	b, err := m.Slice(addr, 8)
	if err != nil {
		return 0, err
	}
	return le.Uint64(b), nil
}

func (m *Memory) putUint64(addr, v uint64) error {
	var b [8]byte
	le.PutUint64(b[:], v)
	return m.Write(addr, b[:])
}

// markDirty sets the bits of the pages [addr, addr+n) touches; mu must
// be held.
func (m *Memory) markDirty(addr, n uint64) {
	if n == 0 {
		return
	}
	for p := addr / PageBytes; p <= (addr+n-1)/PageBytes; p++ {
		m.vmmDirty[p/64] |= 1 << (p % 64)
	}
}

// takeVMMDirty ORs the VMM's own dirty bits into dst and clears them.
func (m *Memory) takeVMMDirty(dst []uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, w := range m.vmmDirty {
		dst[i] |= w
		m.vmmDirty[i] = 0
	}
}

// clearVMMDirty forgets the VMM's own dirty bits.
func (m *Memory) clearVMMDirty() {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.vmmDirty)
}

// copyPages returns the bytes of the listed pages, one after another. It
// read-holds mu per batch of pages, not for the whole copy, so that a
// live snapshot stalls the vCPU thread's writes for a batch at most.
func (m *Memory) copyPages(pages []uint64) []byte {
	out := make([]byte, len(pages)*PageBytes)
	m.copyPagesInto(out, pages)
	return out
}

// copyPagesInto is copyPages into out (len(pages) pages long).
func (m *Memory) copyPagesInto(out []byte, pages []uint64) {
	for len(pages) > 0 {
		batch := pages[:min(len(pages), copyBatchPages)]
		pages = pages[len(batch):]
		m.mu.RLock()
		for _, p := range batch {
			out = out[copy(out, m.buf[p*PageBytes:(p+1)*PageBytes]):]
		}
		m.mu.RUnlock()
	}
}

// nonZeroPages lists the pages that hold a non-zero byte, read-holding mu
// per batch like copyPages. While the guest runs, a page may change
// between this look and its copy: one that turns non-zero later was
// written after the snapshot took its dirty bits and is in the next one,
// and one that turns zero is saved as zeros, which is no harm.
func (m *Memory) nonZeroPages() []uint64 {
	var pages []uint64
	for first := uint64(0); first < m.Pages(); first += copyBatchPages {
		m.mu.RLock()
		for p := first; p < min(first+copyBatchPages, m.Pages()); p++ {
			if !bytes.Equal(m.buf[p*PageBytes:(p+1)*PageBytes], zeroPage) {
				pages = append(pages, p)
			}
		}
		m.mu.RUnlock()
	}
	return pages
}

var zeroPage = make([]byte, PageBytes)

// dirtyPages lists the numbers of the bits set in bitmap, below n, in
// increasing order: the dirty pages of a KVM dirty log or of Memory's own
// bitmap, and the written chunks of the block device's bitmap, which has
// the same form.
func dirtyPages(bitmap []uint64, n uint64) []uint64 { return kvm.DirtyPages(bitmap, n) }
