package vmm

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// exitLoopProgram makes n requests of one kind in a loop, then halts.
func exitLoopProgram(n uint32, port uint16, op uint32, addr uint64, length uint32, arg uint64) []byte {
	var p testProgram
	r := p.req(0, op, addr, length, arg)
	p.code.movECX(n)
	loop := p.code.pc()
	p.code.doorbell(port, r)
	p.code.decECX().jnz(loop)
	p.code.halt(&p, 1, 0)
	return p.elf()
}

// timeExits runs a fresh VM through n exits of one kind and returns the
// time the run took (VM creation and loading excluded).
func timeExits(b *testing.B, cfg Config, image []byte, timed bool) time.Duration {
	b.Helper()
	m, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	if err := m.Load(image); err != nil {
		b.Fatal(err)
	}
	if timed {
		b.StartTimer()
	}
	start := time.Now()
	st, err := m.Run(0)
	d := time.Since(start)
	b.StopTimer()
	if err != nil || st.State != Halted {
		b.Fatalf("run: %+v %v", st, err)
	}
	return d
}

// BenchmarkExit measures one device exit of each kind, a whole round trip
// guest → KVM → VMM → device → guest. The baseline, measured in the same
// run with the same number of exits, is the clock read: the cheapest
// exit, which does nothing but read the host clock. x-clock is the ratio.
func BenchmarkExit(b *testing.B) {
	disk, err := os.Create(filepath.Join(b.TempDir(), "disk"))
	if err != nil {
		b.Fatal(err)
	}
	defer disk.Close()
	disk.Truncate(1 << 20)
	cases := []struct {
		name   string
		port   uint16
		op     uint32
		length uint32
		arg    uint64
	}{
		{"clock", PortClock, OpClockNow, 0, 0},
		{"console-64B", PortConsole, OpConsoleWrite, 64, 0},
		{"entropy-16B", PortEntropy, OpEntropyRead, 16, 0},
		{"nic-mac", PortNIC, OpNICMAC, 0, 0},
		{"nic-rx-empty", PortNIC, OpNICRX, 2048, 0},
		{"nic-wait-0", PortNIC, OpNICWait, 0, 0},
		{"nic-tx-64B", PortNIC, OpNICTX, 64, 0},
		{"block-size", PortBlock, OpBlockSize, 0, 0},
		{"block-read-4K", PortBlock, OpBlockRead, 4096, 8},
		{"block-write-4K", PortBlock, OpBlockWrite, 4096, 8},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			requireKVM(b)
			backend, _ := udpPeer(b)
			cfg := Config{MemSizeBytes: 16 << 20, Console: io.Discard, Disk: disk, NIC: backend}
			n := uint32(b.N)
			b.StopTimer()
			b.ResetTimer()
			// Only the runs are timed, so ns/op is the cost of one exit.
			d := timeExits(b, cfg, exitLoopProgram(n, c.port, c.op, testBufBase, c.length, c.arg), true)
			base := timeExits(b, Config{MemSizeBytes: 16 << 20}, exitLoopProgram(n, PortClock, OpClockNow, 0, 0, 0), false)
			b.ReportMetric(float64(b.N)/d.Seconds(), "exits/s")
			b.ReportMetric(float64(d)/float64(base), "x-clock")
		})
	}
}

// BenchmarkSnapshot takes an incremental snapshot after the guest dirtied
// a given number of pages, and applies it to a second VM (restore). The
// baseline, in the same run, is copying the same bytes with copy():
// x-memcpy says how far the snapshot is from that floor.
func BenchmarkSnapshot(b *testing.B) {
	for _, pages := range []int{1, 100, 10000} {
		b.Run(itoa(uint64(pages))+"-pages", func(b *testing.B) {
			requireKVM(b)
			const mem = 64 << 20
			a := newTestVM(b, Config{MemSizeBytes: mem})
			r := newTestVM(b, Config{MemSizeBytes: mem})
			mustLoad(b, a, dirtyProgram(uint32(pages)))
			if _, err := a.Run(1); err != nil {
				b.Fatal(err)
			}
			full, err := a.Snapshot(Full)
			if err != nil {
				b.Fatal(err)
			}
			if err := r.Restore(full); err != nil {
				b.Fatal(err)
			}
			src := make([]byte, pages*PageBytes)
			dst := make([]byte, pages*PageBytes)
			var snapT, restT, copyT time.Duration
			var saved int
			b.SetBytes(int64(pages * PageBytes))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := a.Run(a.Status().Exits + 1); err != nil {
					b.Fatal(err)
				}
				t0 := time.Now()
				inc, err := a.Snapshot(Incremental)
				t1 := time.Now()
				if err != nil {
					b.Fatal(err)
				}
				if err := r.Restore(inc); err != nil {
					b.Fatal(err)
				}
				t2 := time.Now()
				copy(dst, src)
				t3 := time.Now()
				snapT += t1.Sub(t0)
				restT += t2.Sub(t1)
				copyT += t3.Sub(t2)
				saved = inc.Pages()
			}
			b.StopTimer()
			if saved < pages {
				b.Fatalf("increment held %d pages; the guest dirtied %d", saved, pages)
			}
			n := float64(b.N)
			b.ReportMetric(snapT.Seconds()*1e3/n, "snapshot-ms")
			b.ReportMetric(restT.Seconds()*1e3/n, "restore-ms")
			b.ReportMetric(float64(saved*PageBytes)/(snapT.Seconds()/n)/1e6, "snapshot-MB/s")
			b.ReportMetric(float64(snapT)/float64(max(copyT, 1)), "x-memcpy")
		})
	}
}

// dirtyProgram writes one word into each of n consecutive pages from 8 MiB
// (a new value each round, from RDTSC), then reads the clock: one exit per
// round.
func dirtyProgram(n uint32) []byte {
	var p testProgram
	clock := p.req(0, OpClockNow, 0, 0, 0)
	top := p.code.pc()
	p.code.movRBX(8 << 20).movECX(n)
	inner := p.code.pc()
	p.code.rdtsc().storeEAXAtRBX().addRBX(PageBytes)
	p.code.decECX().jnz(inner)
	p.code.doorbell(PortClock, clock)
	p.code.jmp(top)
	return p.elf()
}

// BenchmarkKVStore measures kvstore requests per second over a UDP NIC,
// live and live while recording every input to a log file, in the same
// run; x-live is recording's time per request over live's.
func BenchmarkKVStore(b *testing.B) {
	requireKVM(b)
	image := guestELF(b, "kvstore")
	run := func(record bool) time.Duration {
		backend, peer := udpPeer(b)
		dir := b.TempDir()
		disk, err := os.Create(filepath.Join(dir, "disk"))
		if err != nil {
			b.Fatal(err)
		}
		defer disk.Close()
		disk.Truncate(4 << 20)
		cfg := Config{MemSizeBytes: 32 << 20, NIC: backend, Disk: disk, Cmdline: "maxreq=" + itoa(uint64(b.N+1))}
		var rec *Recorder
		if record {
			logf, err := os.Create(filepath.Join(dir, "log"))
			if err != nil {
				b.Fatal(err)
			}
			defer logf.Close()
			rec = NewRecorder(logf)
			cfg.Hook = rec
		}
		m, err := New(cfg)
		if err != nil {
			b.Fatal(err)
		}
		defer m.Close()
		if err := m.Load(image); err != nil {
			b.Fatal(err)
		}
		if err := m.Resume(0); err != nil {
			b.Fatal(err)
		}
		c := newKVClient(b, peer, backend.LocalAddr())
		c.do(b, "0 PUT warm up") // the first request also waits for boot
		start := time.Now()
		for i := 1; i <= b.N; i++ {
			c.do(b, kvRequest(i))
		}
		d := time.Since(start)
		if st := m.Wait(); st.State != Halted {
			b.Fatalf("kvstore: %+v", st)
		}
		return d
	}
	b.ResetTimer()
	live := run(false)
	rec := run(true)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/live.Seconds(), "live-req/s")
	b.ReportMetric(float64(b.N)/rec.Seconds(), "recording-req/s")
	b.ReportMetric(float64(rec)/float64(live), "x-live")
}

// BenchmarkFullSnapshot takes a full snapshot of a 64 MiB VM whose guest
// wrote 10,000 pages (40 MB), encodes and decodes it, and restores it into
// a fresh VM. x-memcpy compares the snapshot with copying the same bytes.
func BenchmarkFullSnapshot(b *testing.B) {
	requireKVM(b)
	const mem, pages = 64 << 20, 10000
	a := newTestVM(b, Config{MemSizeBytes: mem})
	mustLoad(b, a, dirtyProgram(pages))
	if _, err := a.Run(1); err != nil {
		b.Fatal(err)
	}
	var snapT, codecT, restT, copyT time.Duration
	var size int
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		r, err := New(Config{MemSizeBytes: mem})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		t0 := time.Now()
		s, err := a.Snapshot(Full)
		if err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		enc, _ := s.MarshalBinary()
		dec, err := UnmarshalSnapshot(enc)
		if err != nil {
			b.Fatal(err)
		}
		t2 := time.Now()
		if err := r.Restore(dec); err != nil {
			b.Fatal(err)
		}
		t3 := time.Now()
		dst := make([]byte, len(s.PageData))
		t4 := time.Now()
		copy(dst, s.PageData)
		copyT += time.Since(t4)
		snapT, codecT, restT = snapT+t1.Sub(t0), codecT+t2.Sub(t1), restT+t3.Sub(t2)
		size = len(enc)
		b.StopTimer()
		r.Close()
		b.StartTimer()
	}
	n := float64(b.N)
	b.ReportMetric(snapT.Seconds()*1e3/n, "snapshot-ms")
	b.ReportMetric(codecT.Seconds()*1e3/n, "encode+decode-ms")
	b.ReportMetric(restT.Seconds()*1e3/n, "restore-ms")
	b.ReportMetric(float64(size)/1e6, "MB")
	b.ReportMetric(float64(snapT)/float64(max(copyT, 1)), "x-memcpy")
}

// BenchmarkPrecopy measures how long bringing up a new replica pauses a
// VM whose guest (memstress, 64 MiB of working set, 16 pages an
// iteration) dirties memory all the time. The pause runs from Pause
// until Resume returns, and holds the snapshot, its encoding and
// decoding (the shipping) and its restore into the replica, since the
// primary goes on only once the replica has it:
//
//   - stop-and-copy: the pause holds a full snapshot;
//   - pre-copy: a live full snapshot and a live increment are taken,
//     shipped and restored while the guest runs, and the pause holds only
//     the paused increment that follows them.
//
// Both are measured in the same run on the same guest; x-precopy is the
// stop-and-copy pause over the pre-copy one.
func BenchmarkPrecopy(b *testing.B) {
	requireKVM(b)
	image := guestELF(b, "memstress")
	const mem = 128 << 20
	cmdline := "pages=16384 iters=1000000000 dirty=16 pattern=stride stride=13 seed=9"
	var con syncBuffer
	a := newTestVM(b, Config{MemSizeBytes: mem, Cmdline: cmdline, Console: &con})
	mustLoad(b, a, image)
	if err := a.Resume(0); err != nil {
		b.Fatal(err)
	}
	// Past the first pass over the working set (1024 iterations), so that
	// a full snapshot holds all of it.
	for deadline := time.Now().Add(10 * time.Second); strings.Count(con.String(), "\n") < 2000; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatalf("memstress printed %d lines in 10s; want 2000: %q", strings.Count(con.String(), "\n"), tail(con.String()))
		}
	}
	ship := func(s *Snapshot, to *Machine) {
		enc, err := s.MarshalBinary()
		if err != nil {
			b.Fatal(err)
		}
		dec, err := UnmarshalSnapshot(enc)
		if err != nil {
			b.Fatal(err)
		}
		if err := to.Restore(dec); err != nil {
			b.Fatal(err)
		}
	}
	pause := func() time.Time {
		t0 := time.Now()
		if err := a.Pause(); err != nil {
			b.Fatal(err)
		}
		if st := a.Status(); st.State != Paused {
			b.Fatalf("memstress is %v; it was to run throughout", st.State)
		}
		return t0
	}
	resume := func(t0 time.Time) time.Duration {
		if err := a.Resume(0); err != nil {
			b.Fatal(err)
		}
		return time.Since(t0)
	}
	replica := func() *Machine {
		r, err := New(Config{MemSizeBytes: mem, Console: io.Discard})
		if err != nil {
			b.Fatal(err)
		}
		return r
	}
	var stopCopy, preCopy time.Duration
	var fullPages, lastPages int // summed over the iterations
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r := replica()
		t0 := pause()
		full, err := a.Snapshot(Full)
		if err != nil {
			b.Fatal(err)
		}
		ship(full, r)
		stopCopy += resume(t0)
		fullPages += full.Pages()
		r.Close()

		r = replica()
		for _, kind := range []SnapshotKind{Full, Incremental} {
			s, err := a.SnapshotLive(kind)
			if err != nil {
				b.Fatal(err)
			}
			ship(s, r)
		}
		t0 = pause()
		last, err := a.Snapshot(Incremental)
		if err != nil {
			b.Fatal(err)
		}
		ship(last, r)
		preCopy += resume(t0)
		lastPages += last.Pages()
		r.Close()
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(stopCopy.Seconds()*1e3/n, "pause-full-ms")
	b.ReportMetric(preCopy.Seconds()*1e3/n, "pause-precopy-ms")
	b.ReportMetric(float64(stopCopy)/float64(max(preCopy, 1)), "x-precopy")
	b.ReportMetric(float64(fullPages)/n, "full-pages")
	b.ReportMetric(float64(lastPages)/n, "last-incr-pages")
}
