package lockstep

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/ftvm/ftvm/lockstep/wire"
)

// resyncIncrementBytes is about the size of a resync's increment of
// 1,000 pages: the pages, their numbers, the registers and devices.
const resyncIncrementBytes = 1000*(4096+8) + 12<<10

// BenchmarkCheckpointReceive is the secondary node's side of a resync's
// checkpoint of 1,000 pages, all of it inside the primary's pause: its
// chunks stepped in (each kept), then the checkpoint-done, on which the
// node assembles the chunks, checks the digest and asks for the restore.
// It also reports that last step alone (done-ms), and the primary's
// DataDigest of the same data (digest-ms), which the agent computes in
// its pause too.
//
//	go test -run '^$' -bench CheckpointReceive ./lockstep/
func BenchmarkCheckpointReceive(b *testing.B) {
	data := make([]byte, resyncIncrementBytes)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	ms := peerCheckpoint(wire.Header{Epoch: 1, Fence: 7}, 1, 0, data, DefaultCheckpointChunkBytes, wire.CheckpointDone{Full: true})
	chunks, done := ms[:len(ms)-1], ms[len(ms)-1]
	var doneTook, digestTook time.Duration
	n := 0
	for b.Loop() {
		b.StopTimer()
		s, err := NewNode(Config{VMID: "vm", Role: wire.RoleSecondary, Mode: AckOnCompare})
		if err != nil {
			b.Fatal(err)
		}
		take(s)
		t0 := time.Now()
		_ = DataDigest(data)
		digestTook += time.Since(t0)
		b.StartTimer()
		for _, m := range chunks {
			if err := s.Step(m); err != nil {
				b.Fatal(err)
			}
			take(s)
		}
		t0 = time.Now()
		if err := s.Step(done); err != nil {
			b.Fatal(err)
		}
		rd := take(s)
		doneTook += time.Since(t0)
		n++
		b.StopTimer()
		restored := false
		for _, c := range rd.Commands {
			restored = restored || c.Kind == CmdRestoreCheckpoint && len(c.Checkpoint.Data) == len(data)
		}
		if !restored {
			b.Fatalf("no restore asked for: %+v", rd.Commands)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(doneTook)/float64(n)/1e6, "done-ms")
	b.ReportMetric(float64(digestTook)/float64(n)/1e6, "digest-ms")
}

// TestDataDigestLanes: DataDigest is the CRC32C of each eighth of the
// data (wire's doc), so it tells apart a flipped bit in any lane, two
// chunks swapped, chunks of another checkpoint and data one byte short.
func TestDataDigestLanes(t *testing.T) {
	data := make([]byte, 8*64<<10+13) // lanes of unequal length
	r := rand.New(rand.NewPCG(3, 4))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	d := DataDigest(data)
	// The layout wire's doc gives, computed here on its own.
	n := len(data)
	for i := range 8 {
		want := crc32.Checksum(data[i*n/8:(i+1)*n/8], crc32.MakeTable(crc32.Castagnoli))
		if got := binary.LittleEndian.Uint32(d[4*i:]); got != want {
			t.Fatalf("lane %d is %#08x, want the CRC32C of bytes [%d, %d): %#08x", i, got, i*n/8, (i+1)*n/8, want)
		}
	}
	if DataDigest(bytes.Clone(data)) != d {
		t.Fatal("the digest of the same bytes differs")
	}
	changed := map[string][]byte{}
	for _, at := range []int{0, n / 8, n/2 + 1, n - 1} {
		b := bytes.Clone(data)
		b[at] ^= 0x10
		changed[fmt.Sprintf("bit flipped at %d", at)] = b
	}
	swapped := bytes.Clone(data)
	const chunk = 16 << 10
	copy(swapped[chunk:2*chunk], data[0:chunk])
	copy(swapped[0:chunk], data[chunk:2*chunk])
	changed["two chunks swapped"] = swapped
	other := bytes.Clone(data)
	copy(other[5*chunk:6*chunk], bytes.Repeat([]byte{0x5a}, chunk))
	changed["a chunk of another checkpoint"] = other
	changed["one byte short"] = data[:n-1]
	for name, b := range changed {
		if DataDigest(b) == d {
			t.Errorf("%s: the digest did not change", name)
		}
	}
}
