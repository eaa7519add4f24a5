package probe

import (
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// The offsets FuncOffsets finds must hold the probe points' code: each
// is an empty function, a lone RET (0xc3) on amd64, and a uprobe set
// anywhere else would never fire or would fire elsewhere.
func TestFuncOffsetsFindTheProbePoints(t *testing.T) {
	bin := ftvmBinary(t)
	syms := []string{SymOutputHeld, SymAckReceived, SymOutputReleased}
	offs, err := FuncOffsets(bin, syms...)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, sym := range syms {
		b := make([]byte, 1)
		if _, err := f.ReadAt(b, int64(offs[sym])); err != nil {
			t.Fatal(err)
		}
		if b[0] != 0xc3 {
			t.Errorf("%s at file offset %#x starts with %#x, not the RET of an empty function", sym, offs[sym], b[0])
		}
	}
	if offs[SymOutputHeld] == offs[SymOutputReleased] || offs[SymOutputHeld] == offs[SymAckReceived] {
		t.Fatal("two probe points at one offset")
	}
}

func TestFuncOffsetErrors(t *testing.T) {
	bin := ftvmBinary(t)
	if _, err := FuncOffset(bin, "github.com/ftvm/ftvm/agent.noSuchProbePoint"); !errors.Is(err, ErrNoSymbol) {
		t.Fatalf("a missing symbol gave %v, want ErrNoSymbol", err)
	}
	stripped := filepath.Join(t.TempDir(), "stripped")
	if out, err := exec.Command("strip", "-o", stripped, bin).CombinedOutput(); err != nil {
		t.Fatalf("strip (binutils): %v\n%s", err, out)
	}
	_, err := FuncOffset(stripped, SymOutputHeld)
	if !errors.Is(err, ErrStripped) {
		t.Fatalf("a stripped binary gave %v, want ErrStripped", err)
	}
	t.Logf("the errors read: %v", err)
	if _, err := FuncOffset(filepath.Join(t.TempDir(), "none"), "x"); err == nil {
		t.Fatal("a missing file gave no error")
	}
}

// bucketOf must put every value in a bucket whose bounds hold it, in
// order, and fold must read quantiles back within half a bucket.
func TestBuckets(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	prev := -1
	for v := uint64(0); v < 1<<20; v += 1 + v/64 {
		b := bucketOf(v)
		lo, hi := bucketBounds(b)
		if v < lo || v >= hi || b < prev {
			t.Fatalf("value %d in bucket %d [%d, %d) after bucket %d", v, b, lo, hi, prev)
		}
		prev = b
	}
	if b := bucketOf(1 << 60); b != Buckets-1 {
		t.Fatalf("a value past the range went to bucket %d, want the last, %d", b, Buckets-1)
	}
	var counts [Buckets]uint64
	values := make([]uint64, 10000)
	for i := range values {
		values[i] = 1000 + uint64(r.ExpFloat64()*50_000)
		counts[bucketOf(values[i])]++
	}
	h := fold(counts[:])
	if h.TotalCount() != int64(len(values)) {
		t.Fatalf("folded %d values, want %d", h.TotalCount(), len(values))
	}
	exact := hdrExact(values)
	for _, q := range []float64{50, 90, 99, 99.9} {
		got, want := float64(h.ValueAtQuantile(q)), float64(exact.ValueAtQuantile(q))
		if got < want*0.93 || got > want*1.07 {
			t.Errorf("p%v: folded %v, exact %v (more than half a bucket apart)", q, got, want)
		}
	}
}

// The Go side's stage and counter lists must match the kernel side's
// maps (enum stage and enum counter in bpf/probe.c).
func TestStagesMatchThePrograms(t *testing.T) {
	spec, err := loadProbe()
	if err != nil {
		t.Fatal(err)
	}
	hist := spec.Maps["hist"]
	if hist.MaxEntries != uint32(StageCount) || hist.ValueSize != Buckets*8 {
		t.Fatalf("hist map: %d entries of %d bytes; the Go side has %d stages of %d buckets", hist.MaxEntries, hist.ValueSize, StageCount, Buckets)
	}
	if n := spec.Maps["counters"].MaxEntries; n != uint32(CounterCount) {
		t.Fatalf("counters map: %d entries; the Go side has %d counters", n, CounterCount)
	}
	for _, name := range []string{"target_tgid", "peer_tgid"} {
		if spec.Variables[name] == nil {
			t.Fatalf("the programs have no variable %s", name)
		}
	}
}
