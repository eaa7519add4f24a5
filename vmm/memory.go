package vmm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
)

// le is the byte order of x86 and of every format in this package.
var le = binary.LittleEndian

// PageBytes is the size of the page that dirty tracking and snapshots
// count in.
const PageBytes = 4096

// ErrOutOfRange is wrapped by every error about a guest address or length
// that falls outside guest memory.
var ErrOutOfRange = errors.New("outside guest memory")

// Memory is the guest's RAM: guest-physical address a is buf[a]. Every
// access the VMM makes on the guest's behalf goes through Slice or Write,
// which check bounds without overflow. Writes by the VMM are not seen by
// KVM's dirty log, so Memory keeps its own bitmap of pages it wrote; a
// snapshot ORs the two.
//
// Memory is owned by the vCPU thread while the VM runs; other goroutines may
// read it only while the VM is paused.
type Memory struct {
	buf      []byte
	vmmDirty []uint64 // one bit per page written by the VMM since the last snapshot
}

func newMemory(buf []byte) *Memory {
	return &Memory{buf: buf, vmmDirty: make([]uint64, bitmapWords(uint64(len(buf))))}
}

func bitmapWords(size uint64) int {
	pages := (size + PageBytes - 1) / PageBytes
	return int((pages + 63) / 64)
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
	for i, w := range m.vmmDirty {
		dst[i] |= w
		m.vmmDirty[i] = 0
	}
}

// dirtyPages lists the page numbers whose bit is set, in increasing order.
func dirtyPages(bitmap []uint64, pages uint64) []uint64 {
	var out []uint64
	for i, w := range bitmap {
		for w != 0 {
			b := uint64(bits.TrailingZeros64(w))
			p := uint64(i)*64 + b
			if p < pages {
				out = append(out, p)
			}
			w &= w - 1
		}
	}
	return out
}
