package main

import (
	"os"
	"slices"
	"testing"

	"github.com/ftvm/ftvm/internal/testutil"
)

func TestSegDescMatchesKnownEncodings(t *testing.T) {
	for _, c := range []struct {
		name          string
		base, limit   uint32
		access, flags uint8
		want          uint64
	}{
		{"kernel code", 0, 0xfffff, 0x9a, 0xa, 0x00af9a000000ffff},
		{"kernel data", 0, 0xfffff, 0x92, 0xc, 0x00cf92000000ffff},
		{"user code", 0, 0xfffff, 0xfa, 0xa, 0x00affa000000ffff},
		{"user data", 0, 0xfffff, 0xf2, 0xc, 0x00cff2000000ffff},
		{"tss", 0x14000, 0x67, 0x89, 0, 0x0000890140000067},
		{"high base", 0xff123456, 0x12345, 0x92, 0x4, 0xff41921234562345},
	} {
		if got := segDesc(c.base, c.limit, c.access, c.flags); got != c.want {
			t.Errorf("%s: segDesc = %#016x, want %#016x", c.name, got, c.want)
		}
	}
}

func TestDirtyPagesDecodesBitmap(t *testing.T) {
	bitmap := []uint64{1<<0 | 1<<63, 0, 1 << 5}
	want := []uint64{0, 63 * pageBytes, (128 + 5) * pageBytes}
	if got := dirtyPages(bitmap); !slices.Equal(got, want) {
		t.Fatalf("dirtyPages = %#x, want %#x", got, want)
	}
	if got := dirtyPages(make([]uint64, 4)); len(got) != 0 {
		t.Fatalf("dirtyPages of an empty bitmap = %#x, want none", got)
	}
}

func openKVM(t *testing.T) int {
	t.Helper()
	testutil.Require(t, testutil.KVM)
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return int(f.Fd())
}

func TestProbePassesOnRealKVM(t *testing.T) {
	testutil.Require(t, testutil.KVM)
	if err := probe(100, 10_000); err != nil {
		t.Fatalf("probe: %v", err)
	}
}

// The real-mode check must notice a guest that writes the wrong byte.
func TestRealModeCheckCatchesWrongByte(t *testing.T) {
	kvm := openKVM(t)
	v, err := newVM(kvm)
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
	kvm := openKVM(t)
	v, err := newVM(kvm)
	if err != nil {
		t.Fatal(err)
	}
	defer v.close()
	if err := longModeCPL3(kvm, v, 0); err == nil {
		t.Fatal("longModeCPL3 accepted a guest running at CPL0")
	}
}
