package main

import (
	"bytes"
	"slices"
	"testing"

	"github.com/ftvm/ftvm/internal/testutil"
	"github.com/ftvm/ftvm/vmm/kvm"
)

// The GDT descriptor encodings the probe guest uses are tested with
// kvm.SegmentDescriptor, in vmm/kvm.

func TestDirtyPagesDecodesBitmap(t *testing.T) {
	bitmap := []uint64{1<<0 | 1<<63, 0, 1 << 5}
	want := []uint64{0, 63 * kvm.PageBytes, (128 + 5) * kvm.PageBytes}
	if got := dirtyPages(bitmap); !slices.Equal(got, want) {
		t.Fatalf("dirtyPages = %#x, want %#x", got, want)
	}
	if got := dirtyPages(make([]uint64, 4)); len(got) != 0 {
		t.Fatalf("dirtyPages of an empty bitmap = %#x, want none", got)
	}
}

func openKVM(t *testing.T) *kvm.System {
	t.Helper()
	testutil.Require(t, testutil.KVM)
	sys, err := kvm.Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sys.Close() })
	return sys
}

func TestProbePassesOnRealKVM(t *testing.T) {
	testutil.Require(t, testutil.KVM)
	if err := probe(100, 10_000); err != nil {
		t.Fatalf("probe: %v", err)
	}
}

// The real-mode check must notice a guest that writes the wrong byte.
func TestRealModeCheckCatchesWrongByte(t *testing.T) {
	sys := openKVM(t)
	v, err := newVM(sys)
	if err != nil {
		t.Fatal(err)
	}
	defer v.close()
	planted := append([]byte(nil), realCode...)
	planted[4] = 'J' // mov $'J',%al
	if err := realModeOut(v, planted); err == nil {
		t.Fatal("realModeOut accepted a guest that wrote 'J' instead of 'K'")
	}
}

// The CPL3 check must notice a guest that was started at CPL0.
func TestLongModeCheckCatchesCPL0(t *testing.T) {
	sys := openKVM(t)
	v, err := newVM(sys)
	if err != nil {
		t.Fatal(err)
	}
	defer v.close()
	if _, err := longModeCPL3(sys, v, lmCode, 0); err == nil {
		t.Fatal("longModeCPL3 accepted a guest running at CPL0")
	}
}

// plant returns a copy of code with the bytes at off replaced by with,
// after checking that they are was (so a change to the guest code cannot
// silently turn a planted bug into something else).
func plant(t *testing.T, code []byte, off int, was, with []byte) []byte {
	t.Helper()
	if !bytes.Equal(code[off:off+len(was)], was) {
		t.Fatalf("code at %d is %x, want %x: the planted bug is out of date", off, code[off:off+len(was)], was)
	}
	out := append([]byte(nil), code...)
	copy(out[off:], with)
	return out
}

// The CPL3 check must notice a guest that stores the wrong value, to the
// wrong doorbell, fewer than 4 bytes or to plain memory instead of a
// doorbell; one that reads a CS with RPL 0; and one that never writes its
// data page.
func TestLongModeCheckCatchesBadDoorbellStores(t *testing.T) {
	sys := openKVM(t)
	for _, c := range []struct {
		name      string
		off       int
		was, with []byte
	}{
		{"wrong value", 1, []byte{'L'}, []byte{'M'}},                                        // mov $'M',%eax
		{"wrong doorbell", 6, []byte{0x00, 0x05}, []byte{0x01, 0x05}},                       // mov $0xc0000501,%edx
		{"1-byte store", 10, []byte{0x89, 0x02}, []byte{0x88, 0x02}},                        // movb %al,(%rdx)
		{"CS with RPL 0", 12, []byte{0x8c, 0xc8}, []byte{0x31, 0xc0}},                       // xor %eax,%eax for mov %cs,%eax
		{"plain memory", 6, []byte{0x00, 0x05, 0x00, 0xc0}, []byte{0x00, 0x05, 0x00, 0x00}}, // store to 0x500: memory, no exit
		{"no user write", 26, []byte{0x89, 0x04, 0x25, 0x00, 0x00, 0x20, 0x00}, bytes.Repeat([]byte{0x90}, 7)},
	} {
		t.Run(c.name, func(t *testing.T) {
			planted := plant(t, lmCode, c.off, c.was, c.with)
			v, err := newVM(sys)
			if err != nil {
				t.Fatal(err)
			}
			defer v.close()
			_, err = longModeCPL3(sys, v, planted, 3)
			if err == nil {
				t.Fatalf("longModeCPL3 accepted a guest with a planted %s", c.name)
			}
			t.Logf("caught: %v", err)
		})
	}
}

// The IOPL=0 check must notice an OUT that reaches userspace (at CPL0 it
// does on every host) and an OUT that does nothing.
func TestOutCheckCatchesPortIO(t *testing.T) {
	sys := openKVM(t)
	for _, c := range []struct {
		name string
		code []byte
		cpl  uint8
	}{
		{"OUT at CPL0", lmOut, 0},
		{"OUT skipped", plant(t, lmOut, 7, []byte{0xee}, []byte{0x90}), 3}, // nop instead of out
	} {
		t.Run(c.name, func(t *testing.T) {
			v, err := newVM(sys)
			if err != nil {
				t.Fatal(err)
			}
			defer v.close()
			if err := v.prepareLongMode(sys); err != nil {
				t.Fatal(err)
			}
			err = outFaultsAtCPL3(v, c.code, c.cpl)
			if err == nil {
				t.Fatalf("outFaultsAtCPL3 accepted %s", c.name)
			}
			t.Logf("caught: %v", err)
		})
	}
}

// The information check must be able to say "works": at CPL0 an OUT
// reaches userspace on every host, whatever IOPL.
func TestPortIOWithIOPL3SeesWorkingOut(t *testing.T) {
	sys := openKVM(t)
	works, err := portIOWithIOPL3(sys, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !works {
		t.Fatal("portIOWithIOPL3 says an OUT at CPL0 faults")
	}
}

// The timing loops check their exits too: a doorbell loop that rings the
// wrong doorbell or does not count, and a compute loop that reports the
// wrong value, must fail.
func TestTimingLoopsCatchWrongExits(t *testing.T) {
	sys := openKVM(t)
	v, err := newVM(sys)
	if err != nil {
		t.Fatal(err)
	}
	defer v.close()
	if err := v.prepareLongMode(sys); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name      string
		off       int
		was, with []byte
	}{
		{"ringing doorbell 0x503", 3, []byte{0x04, 0x05}, []byte{0x03, 0x05}},
		{"that does not count", 7, []byte{0xff, 0xc0}, []byte{0x90, 0x90}}, // nops for inc %eax
	} {
		copy(v.mem[lmUserLoop:], plant(t, lmLoop, c.off, c.was, c.with))
		if _, err := timeDoorbellExits(v, 10); err == nil {
			t.Fatalf("timeDoorbellExits accepted a loop %s", c.name)
		} else {
			t.Logf("caught: %v", err)
		}
	}
	copy(v.mem[lmUserCalc:], plant(t, lmCalc, 1, []byte{0xe5}, []byte{0xe6}))
	if _, err := timeLongModeLoop(v, 1000); err == nil {
		t.Fatal("timeLongModeLoop accepted a loop reporting the wrong value")
	} else {
		t.Logf("caught: %v", err)
	}
}
