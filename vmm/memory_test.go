package vmm

import (
	"bytes"
	"errors"
	"math"
	"slices"
	"testing"

	"github.com/ftvm/ftvm/vmm/kvm"
)

func TestMemoryBounds(t *testing.T) {
	m := newMemory(make([]byte, 64*PageBytes))
	ok := []struct{ addr, n uint64 }{{0, 0}, {0, m.Size()}, {m.Size(), 0}, {m.Size() - 1, 1}}
	for _, c := range ok {
		if _, err := m.Slice(c.addr, c.n); err != nil {
			t.Errorf("Slice(%#x, %d): %v", c.addr, c.n, err)
		}
	}
	bad := []struct{ addr, n uint64 }{{m.Size(), 1}, {m.Size() + 1, 0}, {1, m.Size()}, {math.MaxUint64, 2}, {2, math.MaxUint64}, {math.MaxUint64 - 5, 10}}
	for _, c := range bad {
		if _, err := m.Slice(c.addr, c.n); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("Slice(%#x, %d): err %v, want ErrOutOfRange", c.addr, c.n, err)
		}
		if err := m.Write(c.addr, make([]byte, min(c.n, 16))); c.n <= 16 && c.addr > m.Size()-c.n && !errors.Is(err, ErrOutOfRange) {
			t.Errorf("Write(%#x, %d): err %v", c.addr, c.n, err)
		}
	}
}

func TestMemoryTracksVMMWrites(t *testing.T) {
	m := newMemory(make([]byte, 200*PageBytes))
	m.Write(3*PageBytes+100, []byte{1})
	m.Write(9*PageBytes-1, []byte{1, 2}) // straddles pages 8 and 9
	m.Write(150*PageBytes, make([]byte, 2*PageBytes))
	m.Write(7*PageBytes, nil) // writes nothing, dirties nothing
	bm := make([]uint64, kvm.BitmapWords(m.Size()))
	m.takeVMMDirty(bm)
	if got, want := dirtyPages(bm, m.Pages()), []uint64{3, 8, 9, 150, 151}; !slices.Equal(got, want) {
		t.Fatalf("dirty pages %v, want %v", got, want)
	}
	clear(bm)
	m.takeVMMDirty(bm)
	if got := dirtyPages(bm, m.Pages()); len(got) != 0 {
		t.Fatalf("dirty bits were not cleared: %v", got)
	}
}

// TestMemoryPrecopy copies memory while another goroutine writes it
// through Write, as a live snapshot does while the vCPU thread handles
// exits: a full copy and increments of the pages marked since the bits
// were last taken, each taken before its copy, must add up to the memory
// once the writer stops. Under the race detector it also checks that the
// copy and Write share buf and the bitmap safely.
func TestMemoryPrecopy(t *testing.T) {
	const pages = 3*copyBatchPages + 5 // batches and a partial one
	m := newMemory(make([]byte, pages*PageBytes))
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		var b [PageBytes / 2]byte // half a page, across a page boundary every other write
		for i := uint64(0); ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			le.PutUint64(b[:], i)
			b[len(b)-1] = byte(i)
			m.Write((i*PageBytes*3/2)%(pages*PageBytes-uint64(len(b))), b[:])
		}
	}()
	image := make([]byte, pages*PageBytes)
	bm := make([]uint64, kvm.BitmapWords(m.Size()))
	apply := func(list []uint64) {
		data := m.copyPages(list)
		for i, p := range list {
			copy(image[p*PageBytes:], data[i*PageBytes:(i+1)*PageBytes])
		}
	}
	m.takeVMMDirty(bm)
	apply(m.nonZeroPages())
	for range 20 {
		clear(bm)
		m.takeVMMDirty(bm)
		apply(dirtyPages(bm, m.Pages()))
	}
	close(stop)
	<-done
	clear(bm)
	m.takeVMMDirty(bm)
	apply(dirtyPages(bm, m.Pages()))
	if !bytes.Equal(image, m.buf) {
		t.Fatalf("the copies add up to memory that differs at %#x", firstDiff(image, m.buf))
	}
}
