//go:build ftvm_rdma && cgo && linux

package verbs

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/internal/testutil"
	"github.com/ftvm/ftvm/rdma"
)

// childEnv makes the test binary the second process of TestTwoProcesses.
const childEnv = "FTVM_VERBS_CHILD"

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		os.Exit(childMain(mode))
	}
	os.Exit(m.Run())
}

// localRoCEAddr finds an address of this host that has a RoCE v2 GID on
// an active port: the "peer" the one-host tests route to.
func localRoCEAddr(t testing.TB) netip.Addr {
	t.Helper()
	testutil.Require(t, testutil.RDMA)
	devs, err := Devices()
	if err != nil {
		t.Fatalf("Devices: %v", err)
	}
	for _, d := range devs {
		for _, p := range d.Ports {
			if p.State != "ACTIVE" {
				continue
			}
			for _, g := range p.GIDs {
				if g.Type == roceV2 && g.GID.Is4In6() && g.Netdev != "" {
					return g.GID.Unmap()
				}
			}
		}
	}
	testutil.SkipMissing(t, fmt.Errorf("no active RDMA port with an IPv4 RoCE v2 GID (devices: %+v): add one with `rdma link add rxe0 type rxe netdev NETDEV` on a netdev with an IPv4 address", devs), testutil.RDMA)
	return netip.Addr{}
}

func newProvider(t testing.TB) *Provider {
	t.Helper()
	addr := localRoCEAddr(t)
	p, err := NewForPeer(addr)
	if err != nil {
		t.Fatalf("NewForPeer(%v): %v", addr, err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func open(t testing.TB, p *Provider, size int) rdma.Endpoint {
	t.Helper()
	ep, err := p.Open(size)
	if err != nil {
		t.Fatalf("Open(%d): %v", size, err)
	}
	t.Cleanup(func() { ep.Close() })
	return ep
}

// pair connects two endpoints of one provider: a (aSize) and b (bSize).
func pair(t testing.TB, p *Provider, aSize, bSize int) (a, b rdma.Link) {
	t.Helper()
	ea, eb := open(t, p, aSize), open(t, p, bSize)
	a, err := ea.Connect(eb.Params())
	if err != nil {
		t.Fatalf("a.Connect: %v", err)
	}
	b, err = eb.Connect(ea.Params())
	if err != nil {
		t.Fatalf("b.Connect: %v", err)
	}
	return a, b
}

// pollOne spins on Poll (and Wait) until one imm arrives or the link fails.
func pollOne(t testing.TB, l rdma.Link) uint32 {
	t.Helper()
	return pollOneUnless(t, l, nil)
}

// pollOneUnless is pollOne that gives up as soon as stop has an error.
func pollOneUnless(t testing.TB, l rdma.Link, stop <-chan error) uint32 {
	t.Helper()
	buf := make([]uint32, 0, 1)
	deadline := time.Now().Add(30 * time.Second)
	for spins := 0; ; spins++ {
		n, err := l.Poll(buf)
		if err != nil {
			t.Fatalf("Poll: %v", err)
		}
		if n == 1 {
			return buf[:1][0]
		}
		if spins > 100 {
			if err := l.Wait(time.Millisecond); err != nil {
				t.Fatalf("Wait: %v", err)
			}
		}
		select {
		case err := <-stop:
			t.Fatalf("gave up waiting for an imm: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no imm in 30s")
		}
	}
}

func TestAvailable(t *testing.T) {
	addr := localRoCEAddr(t)
	dev, why, ok := Available(addr)
	if !ok || dev == "" {
		t.Fatalf("Available(%v) = %q, %q, false; want the device serving it", addr, dev, why)
	}
	t.Logf("Available(%v): %s: %s", addr, dev, why)
	if _, why, ok := Available(netip.MustParseAddr("127.0.0.1")); ok {
		t.Fatalf("Available(127.0.0.1) = true (%s), but lo has no RDMA device", why)
	}
}

// TestRing: records of many sizes, written into the peer's ring with
// WRITEs that wrap at its end, each published by a WRITE_WITH_IMM of its
// sequence number; the reader checks every byte when the imm arrives and
// acknowledges with an imm of its own, which is the writer's flow control.
func TestRing(t *testing.T) {
	p := newProvider(t)
	const ringSize = 64 << 10
	const window = 8 // records in flight; 8 * maxRec < ringSize, so nothing unread is overwritten
	const maxRec = 4000
	const records = 1500
	w, r := pair(t, p, 4096, ringSize)
	if w.PeerSize() != ringSize || len(w.Staging()) != ringSize || len(r.Local()) != ringSize {
		t.Fatalf("PeerSize %d, staging %d, local %d; want %d", w.PeerSize(), len(w.Staging()), len(r.Local()), ringSize)
	}
	recLen := func(seq int) int { return 1 + (seq*7919)%maxRec }
	fill := func(b []byte, seq int) {
		for i := range b {
			b[i] = byte(seq*31 + i)
		}
	}
	done := make(chan error, 1)
	go func() { // the reader
		pos := 0
		want := make([]byte, maxRec)
		got := make([]byte, maxRec)
		buf := make([]uint32, 0, 16)
		for seq := 0; seq < records; {
			n, err := r.Poll(buf)
			if err != nil {
				done <- err
				return
			}
			if n == 0 {
				if err := r.Wait(time.Second); err != nil {
					done <- err
					return
				}
				continue
			}
			for _, imm := range buf[:n] {
				if int(imm) != seq {
					done <- fmt.Errorf("imm %d arrived where %d was next: out of order", imm, seq)
					return
				}
				l := recLen(seq)
				fill(want[:l], seq)
				for i := 0; i < l; i++ {
					got[i] = r.Local()[(pos+i)%ringSize]
				}
				if !bytes.Equal(got[:l], want[:l]) {
					done <- fmt.Errorf("record %d (%d bytes at %d) is not what was written", seq, l, pos)
					return
				}
				pos = (pos + l) % ringSize
				if err := r.WriteImm(0, 0, imm); err != nil {
					done <- err
					return
				}
				seq++
			}
		}
		done <- nil
	}()
	pos, acked := 0, 0
	ack := make([]uint32, 0, 16)
	for seq := 0; seq < records; seq++ {
		for seq-acked >= window {
			a := pollOneUnless(t, w, done)
			if int(a) != acked {
				t.Fatalf("ack %d where %d was next", a, acked)
			}
			acked++
		}
		l := recLen(seq)
		rec := make([]byte, l)
		fill(rec, seq)
		first := min(l, ringSize-pos)
		copy(w.Staging()[pos:], rec[:first])
		copy(w.Staging()[0:], rec[first:])
		if first < l { // wraps: the tail goes first, the head carries the imm
			if err := w.Write(pos, first); err != nil {
				t.Fatalf("Write: %v", err)
			}
			if err := w.WriteImm(0, l-first, uint32(seq)); err != nil {
				t.Fatalf("WriteImm: %v", err)
			}
		} else if err := w.WriteImm(pos, l, uint32(seq)); err != nil {
			t.Fatalf("WriteImm: %v", err)
		}
		pos = (pos + l) % ringSize
	}
	if err := <-done; err != nil {
		t.Fatalf("reader: %v", err)
	}
	for acked < records {
		n, err := w.Poll(ack[:0])
		if err != nil {
			t.Fatal(err)
		}
		acked += n
	}
	if err := w.Err(); err != nil {
		t.Fatalf("writer's Err after the run: %v", err)
	}
}

func TestBounds(t *testing.T) {
	p := newProvider(t)
	w, _ := pair(t, p, 4096, 8192)
	for _, c := range []struct{ off, n int }{{-1, 1}, {0, -1}, {8192, 1}, {8191, 2}, {0, 8193}, {1 << 62, 1 << 62}} {
		if err := w.Write(c.off, c.n); err == nil {
			t.Errorf("Write(%d, %d) into 8192 bytes succeeded", c.off, c.n)
		}
		if err := w.WriteImm(c.off, c.n, 1); err == nil {
			t.Errorf("WriteImm(%d, %d) into 8192 bytes succeeded", c.off, c.n)
		}
	}
	if err := w.Write(8191, 1); err != nil {
		t.Errorf("Write of the last byte: %v", err)
	}
	for _, size := range []int{0, -4096, 4095, 4097, MaxRegionSize + 4096} {
		if ep, err := p.Open(size); err == nil {
			ep.Close()
			t.Errorf("Open(%d) succeeded", size)
		}
	}
}

// Every malformed Params is refused by a real endpoint, which then still
// connects with good ones.
func TestConnectRefusesBadParams(t *testing.T) {
	p := newProvider(t)
	ea, eb := open(t, p, 4096), open(t, p, 4096)
	good := eb.Params()
	for name, bad := range badParams(good) {
		if l, err := ea.Connect(bad); err == nil || l != nil {
			t.Fatalf("%s: Connect accepted % x", name, bad)
		}
	}
	a, err := ea.Connect(good)
	if err != nil {
		t.Fatalf("Connect(good) after the bad ones: %v", err)
	}
	b, err := eb.Connect(ea.Params())
	if err != nil {
		t.Fatal(err)
	}
	copy(a.Staging(), "hello")
	if err := a.WriteImm(0, 5, 7); err != nil {
		t.Fatal(err)
	}
	if imm := pollOne(t, b); imm != 7 || string(b.Local()[:5]) != "hello" {
		t.Fatalf("after bad params: imm %d, data %q", imm, b.Local()[:5])
	}
	if _, err := ea.Connect(good); err == nil {
		t.Fatalf("a second Connect succeeded")
	}
}

// Wait blocks while nothing arrives and wakes for an imm; Close wakes it.
func TestWaitBlocksAndWakes(t *testing.T) {
	p := newProvider(t)
	a, b := pair(t, p, 4096, 4096)
	if err := b.Wait(20 * time.Millisecond); err != nil {
		t.Fatalf("idle Wait: %v", err)
	}
	returned := make(chan error, 1)
	go func() { returned <- b.Wait(time.Minute) }()
	select {
	case err := <-returned:
		t.Fatalf("Wait(1m) returned (%v) with nothing sent: it does not block", err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := a.WriteImm(0, 0, 42); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-returned:
		if err != nil {
			t.Fatalf("Wait: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("Wait(1m) did not wake for an imm within 30s")
	}
	buf := make([]uint32, 0, 4)
	if n, err := b.Poll(buf); err != nil || n != 1 || buf[:1][0] != 42 {
		t.Fatalf("Poll after Wait = %d, %v, %v; want the imm 42", n, err, buf[:n])
	}
	// Close wakes a Wait in progress.
	go func() { returned <- b.Wait(time.Minute) }()
	time.Sleep(100 * time.Millisecond)
	b.Close()
	select {
	case err := <-returned:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("Wait across Close = %v, want ErrClosed", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("Close did not wake Wait")
	}
}

// Revoke: the peer's WRITE after it fails in the NIC and changes nothing.
func TestRevoke(t *testing.T) {
	p := newProvider(t)
	stale, fenced := pair(t, p, 4096, 8192)
	copy(stale.Staging(), "before")
	if err := stale.WriteImm(0, 6, 1); err != nil {
		t.Fatal(err)
	}
	if imm := pollOne(t, fenced); imm != 1 || string(fenced.Local()[:6]) != "before" {
		t.Fatalf("before Revoke: imm %d, data %q", imm, fenced.Local()[:6])
	}
	if err := fenced.Revoke(); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	if err := fenced.Revoke(); err != nil {
		t.Fatalf("second Revoke: %v", err)
	}
	snapshot := append([]byte(nil), fenced.Local()...)
	for i := range stale.Staging() {
		stale.Staging()[i] = 0xee
	}
	if err := stale.Write(0, 8192); err != nil {
		t.Fatalf("posting the stale write: %v", err)
	}
	_ = stale.WriteImm(0, 4096, 2) // posting may already fail: the link is failing
	deadline := time.Now().Add(30 * time.Second)
	for stale.Err() == nil {
		if time.Now().After(deadline) {
			t.Fatalf("the stale peer's WRITE into a revoked region did not fail within 30s")
		}
		time.Sleep(time.Millisecond)
	}
	t.Logf("stale peer's Err after %v: %v", 30*time.Second-time.Until(deadline), stale.Err())
	if !strings.Contains(stale.Err().Error(), "remote access error") {
		t.Errorf("stale peer's Err = %v, want a remote access error", stale.Err())
	}
	if err := stale.Write(0, 1); err == nil {
		t.Errorf("Write on a failed link succeeded")
	}
	if !bytes.Equal(fenced.Local(), snapshot) {
		t.Fatalf("the revoked region changed after Revoke")
	}
	buf := make([]uint32, 0, 4)
	if n, err := fenced.Poll(buf); n != 0 || !errors.Is(err, ErrRevoked) {
		t.Fatalf("fenced side's Poll = %d, %v (imms %v); want 0 and ErrRevoked", n, err, buf[:n])
	}
	if !errors.Is(fenced.Err(), ErrRevoked) {
		t.Fatalf("fenced side's Err = %v, want ErrRevoked", fenced.Err())
	}
}

// TestTwoProcesses: the same exchange between this process and a child,
// with the Params passed over pipes, as a daemon passes them over TCP.
func TestTwoProcesses(t *testing.T) {
	p := newProvider(t)
	l, child := startChild(t, p, "check")
	for i := 0; i < 100; i++ {
		binary.LittleEndian.PutUint64(l.Staging()[i*8:], uint64(i)*0x9e3779b97f4a7c15)
		if err := l.WriteImm(i*8, 8, uint32(i)); err != nil {
			t.Fatal(err)
		}
		if got := pollOne(t, l); got != uint32(i) {
			t.Fatalf("child acked %d, want %d", got, i)
		}
		if v := binary.LittleEndian.Uint64(l.Local()[i*8:]); v != ^(uint64(i) * 0x9e3779b97f4a7c15) {
			t.Fatalf("child's reply %d is %#x", i, v)
		}
	}
	if err := child(); err != nil {
		t.Fatalf("child: %v", err)
	}
}

// startChild runs this test binary as the peer process in mode (see
// childMain), connects to it over an 8 KiB region each, and returns the
// link and a function that waits for the child to finish.
func startChild(tb testing.TB, p *Provider, mode string, env ...string) (rdma.Link, func() error) {
	tb.Helper()
	ep := open(tb, p, 8192)
	exe, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(append(os.Environ(), childEnv+"="+mode), env...)
	cmd.Stderr = os.Stderr
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	fmt.Fprintln(stdin, hex.EncodeToString(ep.Params()))
	lines := bufio.NewScanner(stdout)
	if !lines.Scan() {
		tb.Fatalf("child sent no params: %v", lines.Err())
	}
	peer, err := hex.DecodeString(lines.Text())
	if err != nil {
		tb.Fatalf("child's params %q: %v", lines.Text(), err)
	}
	l, err := ep.Connect(peer)
	if err != nil {
		tb.Fatalf("Connect to the child: %v", err)
	}
	fmt.Fprintln(stdin, "connected")
	return l, func() error { stdin.Close(); return cmd.Wait() }
}

// childMain is the peer process of startChild. Mode "check" echoes each
// 8-byte value, inverted, into the parent's region at the same offset
// (100 of them); "echo-spin:N" and "echo-wait:N" answer N imms with a
// 64-byte WRITE_WITH_IMM of the same imm, receiving by spinning on Poll or
// the daemon's way.
func childMain(mode string) int {
	die := func(f string, a ...any) int { fmt.Fprintf(os.Stderr, "verbs child: "+f+"\n", a...); return 1 }
	echo, rounds := "", 100
	if m, n, ok := strings.Cut(mode, ":"); ok {
		echo = m
		var err error
		if rounds, err = strconv.Atoi(n); err != nil {
			return die("mode %q: %v", mode, err)
		}
	} else if mode != "check" {
		return die("unknown mode %q", mode)
	}
	in := bufio.NewScanner(os.Stdin)
	if !in.Scan() {
		return die("no params from the parent")
	}
	peer, err := hex.DecodeString(in.Text())
	if err != nil {
		return die("params: %v", err)
	}
	addr := netip.Addr{}
	if pp, err := parseParams(peer); err == nil {
		addr = netip.AddrFrom16(pp.gid).Unmap()
	}
	p, err := NewForPeer(addr)
	if err != nil {
		return die("NewForPeer(%v): %v", addr, err)
	}
	defer p.Close()
	ep, err := p.Open(8192)
	if err != nil {
		return die("Open: %v", err)
	}
	defer ep.Close()
	fmt.Println(hex.EncodeToString(ep.Params()))
	l, err := ep.Connect(peer)
	if err != nil {
		return die("Connect: %v", err)
	}
	in.Scan() // the parent is connected too
	buf := make([]uint32, 0, 8)
	if echo != "" {
		spin := time.Duration(spinForever)
		if echo == "echo-wait" {
			spin = rdma.DefaultWaitSpin
		}
		for i := 0; i < rounds; i++ {
			imm, err := recvOne(l, buf[:0:1], spin)
			if err == nil {
				err = l.WriteImm(0, rttMsgSize, imm)
			}
			if err != nil {
				return die("echo %d: %v", i, err)
			}
		}
		in.Scan() // until the parent is done with the link
		return 0
	}
	for i := 0; i < rounds; {
		n, err := l.Poll(buf)
		if err != nil {
			return die("Poll: %v", err)
		}
		if n == 0 {
			l.Wait(10 * time.Millisecond)
			continue
		}
		for _, imm := range buf[:n] {
			off := int(imm) * 8
			v := binary.LittleEndian.Uint64(l.Local()[off:])
			binary.LittleEndian.PutUint64(l.Staging()[off:], ^v)
			if err := l.WriteImm(off, 8, imm); err != nil {
				return die("WriteImm: %v", err)
			}
			i++
		}
	}
	return 0
}
