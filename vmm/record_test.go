package vmm

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

// script is a fixed sequence of requests, as a guest would make them.
func runScript(t *testing.T, b *exitBench, outputByte byte) error {
	t.Helper()
	b.mem.Write(0x2000, []byte{'o', 'u', 't', outputByte})
	steps := []struct {
		port uint16
		op   uint32
		addr uint64
		n    uint32
		arg  uint64
	}{
		{PortClock, OpClockNow, 0, 0, 0},
		{PortEntropy, OpEntropyRead, 0x3000, 32, 0},
		{PortConsole, OpConsoleWrite, 0x2000, 4, 0},
		{PortNIC, OpNICMAC, 0x3100, 0, 0},
		{PortNIC, OpNICRX, 0x3200, 2048, 0},
		{PortBlock, OpBlockSize, 0, 0, 0},
		{PortBlock, OpBlockRead, 0x4000, 512, 1},
		{PortClock, OpClockNow, 0, 0, 0},
		{PortHalt, OpHaltExit, 0, 0, 3},
	}
	for _, s := range steps {
		if _, _, err := b.call(s.port, s.op, s.addr, s.n, s.arg); err != nil {
			return err
		}
	}
	return nil
}

func TestRecordReplayReproducesInputs(t *testing.T) {
	var log bytes.Buffer
	rec := NewRecorder(&log)
	live := newExitBench(t, benchOpts{hook: rec, sectors: 4, entropy: bytes.NewReader(bytes.Repeat([]byte{1, 2, 3}, 100))})
	live.disk.WriteAt(bytes.Repeat([]byte{0xcd}, 512), 512)
	if err := runScript(t, live, '!'); err != nil {
		t.Fatal(err)
	}
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
	// The replica has other devices: other entropy, no disk. Replay must
	// not touch them, and memory must come out the same.
	rep := NewReplayer(bytes.NewReader(log.Bytes()))
	replica := newExitBench(t, benchOpts{hook: rep, entropy: bytes.NewReader(bytes.Repeat([]byte{9}, 100))})
	if err := runScript(t, replica, '!'); err != nil {
		t.Fatal(err)
	}
	if err := rep.Done(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(live.mem.buf, replica.mem.buf) {
		t.Fatalf("replayed memory differs at %#x", firstDiff(live.mem.buf, replica.mem.buf))
	}
	if replica.con.String() != "" {
		t.Fatal("replay delivered an output; it must drop them")
	}
	if live.con.String() != "out!" {
		t.Fatalf("live console %q", live.con.String())
	}
}

func TestReplayDetectsDivergence(t *testing.T) {
	var log bytes.Buffer
	rec := NewRecorder(&log)
	live := newExitBench(t, benchOpts{hook: rec, sectors: 4})
	if err := runScript(t, live, '!'); err != nil {
		t.Fatal(err)
	}
	rec.Close()

	t.Run("different output bytes", func(t *testing.T) {
		rep := NewReplayer(bytes.NewReader(log.Bytes()))
		replica := newExitBench(t, benchOpts{hook: rep})
		err := runScript(t, replica, '?')
		var d *DivergenceError
		if !errors.As(err, &d) || d.Index != 2 || !strings.Contains(err.Error(), "SHA-256") {
			t.Fatalf("err %v; want a divergence at exit 2 (the console output)", err)
		}
	})
	t.Run("different request", func(t *testing.T) {
		rep := NewReplayer(bytes.NewReader(log.Bytes()))
		replica := newExitBench(t, benchOpts{hook: rep})
		replica.mustCall(PortClock, OpClockNow, 0, 0, 0)
		_, _, err := replica.call(PortConsole, OpConsoleWrite, 0x2000, 4, 0)
		var d *DivergenceError
		if !errors.As(err, &d) || d.Index != 1 || !strings.Contains(err.Error(), "entropy READ input") {
			t.Fatalf("err %v; want a divergence at exit 1 naming the recorded entropy read", err)
		}
	})
	t.Run("guest goes on past the log", func(t *testing.T) {
		rep := NewReplayer(bytes.NewReader(log.Bytes()))
		replica := newExitBench(t, benchOpts{hook: rep})
		runScript(t, replica, '!')
		_, _, err := replica.call(PortClock, OpClockNow, 0, 0, 0)
		if !errors.Is(err, ErrDivergence) {
			t.Fatalf("err %v; want a divergence", err)
		}
	})
	t.Run("replay stops early", func(t *testing.T) {
		rep := NewReplayer(bytes.NewReader(log.Bytes()))
		replica := newExitBench(t, benchOpts{hook: rep})
		replica.mustCall(PortClock, OpClockNow, 0, 0, 0)
		if err := rep.Done(); err == nil || !strings.Contains(err.Error(), "goes on") {
			t.Fatalf("Done: %v; want the unreplayed rest named", err)
		}
	})
}

func TestReplayRefusesCorruptLogs(t *testing.T) {
	var log bytes.Buffer
	rec := NewRecorder(&log)
	live := newExitBench(t, benchOpts{hook: rec, sectors: 4})
	if err := runScript(t, live, '!'); err != nil {
		t.Fatal(err)
	}
	rec.Close()
	good := log.Bytes()
	replay := func(b []byte) error {
		rep := NewReplayer(bytes.NewReader(b))
		replica := newExitBench(t, benchOpts{hook: rep})
		if err := runScript(t, replica, '!'); err != nil {
			return err
		}
		return rep.Done()
	}
	if err := replay(good); err != nil {
		t.Fatalf("the good log fails: %v", err)
	}
	// Every flipped byte and every truncation is caught by the decoder.
	decodeAll := func(b []byte) error {
		rep := NewReplayer(bytes.NewReader(b))
		for {
			_, err := rep.next()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
		}
	}
	if err := decodeAll(good); err != nil {
		t.Fatalf("the good log does not decode: %v", err)
	}
	for i := range good {
		bad := bytes.Clone(good)
		bad[i] ^= 0x40
		if err := decodeAll(bad); err == nil {
			t.Fatalf("flipping byte %d went unnoticed", i)
		}
	}
	// A cut at a record boundary reads as a shorter log (the replayed
	// guest then finds no record: a divergence); any other cut is an error.
	boundary := map[int64]bool{}
	walk := NewReplayer(bytes.NewReader(good))
	for {
		if _, err := walk.next(); err != nil {
			break
		}
		boundary[walk.offset] = true
	}
	boundary[logHeaderBytes] = true
	for n := 1; n < len(good); n++ {
		err := decodeAll(good[:n])
		if !boundary[int64(n)] && err == nil {
			t.Fatalf("truncating to %d bytes went unnoticed", n)
		}
	}
	if err := replay(good[:len(good)-3]); err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Fatalf("replaying a truncated log: %v; want it named truncated", err)
	}
	if err := replay(append([]byte("NOTALOG!"), good[8:]...)); err == nil || !strings.Contains(err.Error(), "not an ftvm input log") {
		t.Fatalf("wrong magic: %v", err)
	}
}

// FuzzReplayLog feeds arbitrary bytes to the log decoder: it must refuse
// them with an error, never panic, and accept a record only when its
// checksum and fields are valid.
func FuzzReplayLog(f *testing.F) {
	var log bytes.Buffer
	rec := NewRecorder(&log)
	b := newExitBench(f, benchOpts{hook: rec, sectors: 4})
	b.mustCall(PortClock, OpClockNow, 0, 0, 0)
	b.mustCall(PortEntropy, OpEntropyRead, 0x3000, 8, 0)
	b.mem.Write(0x2000, []byte("x"))
	b.mustCall(PortConsole, OpConsoleWrite, 0x2000, 1, 0)
	rec.Close()
	f.Add(log.Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		rep := NewReplayer(bytes.NewReader(data))
		for i := 0; i < 1000; i++ {
			r, err := rep.next()
			if err != nil {
				return
			}
			if _, ok := lookupOp(r.device, r.op); !ok {
				t.Fatalf("decoder accepted unknown device %d op %d", r.device, r.op)
			}
		}
	})
}

func TestReplayGoesLiveAtTheEndOfTheLog(t *testing.T) {
	var log bytes.Buffer
	rec := NewRecorder(&log)
	primary := newExitBench(t, benchOpts{hook: rec})
	_, recorded := primary.mustCall(PortClock, OpClockNow, 0, 0, 0)
	rec.Close()

	rep := NewReplayer(bytes.NewReader(log.Bytes()))
	rep.LiveAfterEnd = true
	replica := newExitBench(t, benchOpts{hook: rep})
	time.Sleep(2 * time.Millisecond) // the replica's own clock moves on
	if _, v := replica.mustCall(PortClock, OpClockNow, 0, 0, 0); v != recorded || rep.Live() {
		t.Fatalf("first exit: clock %d live=%v; want the recorded %d from the log", v, rep.Live(), recorded)
	}
	replica.mem.Write(0x2000, []byte("after"))
	replica.mustCall(PortConsole, OpConsoleWrite, 0x2000, 5, 0)
	if !rep.Live() || replica.con.String() != "after" {
		t.Fatalf("past the log: live=%v console %q; want live and the output delivered", rep.Live(), replica.con.String())
	}
}
