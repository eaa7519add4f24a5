package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/internal/netframe"
	"github.com/ftvm/ftvm/internal/testutil"
	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/lockstep/wire"
	"github.com/ftvm/ftvm/tcpfallback"
	"golang.org/x/sys/unix"
)

func TestDaemonUsageErrors(t *testing.T) {
	dir := t.TempDir()
	psk := filepath.Join(dir, "psk")
	os.WriteFile(psk, bytes.Repeat([]byte("k"), 32), 0o600)
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"primary", "--psk-file", psk}, "--arbiter-dir is required"},
		{[]string{"primary", "--arbiter-dir", dir}, "authenticate the peer"},
		{[]string{"primary", "--arbiter-dir", dir, "--psk-file", psk, "--tls-dir", dir}, "not both"},
		{[]string{"secondary", "--arbiter-dir", dir, "--psk-file", psk}, "--peer is required"},
		{[]string{"secondary", "--arbiter-dir", dir, "--psk-file", psk, "--peer", "nohostport"}, "--peer"},
		{[]string{"primary", "--arbiter-dir", dir, "--psk-file", psk, "--mode", "fast"}, `--mode "fast"`},
		{[]string{"primary", "--arbiter-dir", dir, "--psk-file", psk, "--mem", "lots"}, "is not a size"},
		{[]string{"primary", "--arbiter-dir", dir, "--psk-file", psk, "--mac", "01:00:5e:00:00:01"}, "multicast"},
		{[]string{"primary", "--arbiter-dir", dir, "--psk-file", psk, "--cmdline", "ip=300.1.1.1"}, "not an IPv4 address"},
		{[]string{"primary", "--arbiter-dir", dir, "--psk-file", psk, "--tap", "t0", "--udp-nic", "a:1,b:2"}, "alternatives"},
		{[]string{"primary", "--arbiter-dir", dir, "--psk-file", psk, "--disk-size", "1000"}, "multiple of the 512-byte sector"},
		{[]string{"primary", "--config", filepath.Join(dir, "missing.conf")}, "--config"},
		{[]string{"primary", "--arbiter-dir", dir, "--psk-file", psk, "--reach-check", "gateway"}, "want IPv4 addresses"},
		{[]string{"primary", "--arbiter-dir", dir, "--psk-file", psk, "--reach-link", "eth0"}, "--reach-link needs --reach-check"},
		{[]string{"primary", "--arbiter-dir", dir, "--psk-file", psk, "--reach-check", "10.0.0.1", "--reach-lost-after", "15ms"}, "at least two --reach-interval"},
		{[]string{"primary", "--arbiter-dir", dir, "--psk-file", psk, "--reach-check", "10.0.0.1", "--reach-lost-after", "200ms"}, "shorter than the peer timeout"},
		{[]string{"primary", "--arbiter-dir", dir, "--psk-file", psk, "--metrics-listen", ":9100"}, "127.0.0.1:9100 for this host only"},
		{[]string{"dash", "--control", "a=,b=/x.sock"}, "give a control socket path"},
		{[]string{"dash", "--control", "/a/x.sock,/b/x.sock"}, `two hosts are called "x"`},
	}
	for _, c := range cases {
		code, _, errs := runFtvm(c.args...)
		if code != exitUsage || !strings.Contains(errs, c.want) {
			t.Errorf("ftvm %q: exit %d, stderr %q; want exit %d naming %q", c.args, code, errs, exitUsage, c.want)
		}
	}
	code, out, errs := runFtvm("secondary", "--help")
	if code != exitOK || !strings.Contains(errs+out, "--peer") || !strings.Contains(errs+out, "3 halted") {
		t.Errorf("secondary --help: exit %d, %q", code, errs)
	}
}

func TestDaemonStartFailsClearlyWithoutGuest(t *testing.T) {
	dir := t.TempDir()
	psk := filepath.Join(dir, "psk")
	os.WriteFile(psk, bytes.Repeat([]byte("k"), 32), 0o600)
	code, _, errs := runFtvm("primary", "--arbiter-dir", dir, "--psk-file", psk, "--guest", filepath.Join(dir, "nosuch"), "--control", filepath.Join(dir, "c.sock"))
	if code != exitFailure || !strings.Contains(errs, "make guests") {
		t.Fatalf("exit %d, stderr %q; want a failure that says how to build the guest", code, errs)
	}
}

func TestConfigFile(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "ftvm.conf")
	os.WriteFile(conf, []byte("# a comment\nvm-id = web1\nmode=compare\n  mem 32MiB\nwait-for-secondary\ncmdline = \"ip=10.1.2.3 port=7000\"\narbiter-dir = "+dir+"\npsk-file = x\n"), 0o600)
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	finish := daemonFlags(fs, wire.RolePrimary)
	if err := fs.Parse([]string{"--config", conf, "--vm-id", "cli-wins"}); err != nil {
		t.Fatal(err)
	}
	if err := applyConfigFile(fs); err != nil {
		t.Fatal(err)
	}
	c, err := finish()
	if err != nil {
		t.Fatal(err)
	}
	if c.vmID != "cli-wins" || c.mode != lockstep.AckOnCompare || c.memBytes != 32<<20 || !c.waitForSecondary ||
		c.vmIP.String() != "10.1.2.3" || c.cmdline != "ip=10.1.2.3 port=7000" {
		t.Fatalf("config %+v", c)
	}

	for _, bad := range []struct{ text, want string }{
		{"nosuch = 1\n", `:1: unknown setting "nosuch"`},
		{"\n\nmode\n", ":3: mode needs a value"},
		{"tick = soon\n", ":1: tick"},
	} {
		os.WriteFile(conf, []byte(bad.text), 0o600)
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		daemonFlags(fs, wire.RolePrimary)
		fs.Parse([]string{"--config", conf})
		if err := applyConfigFile(fs); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("config %q: error %v, want %q", bad.text, err, bad.want)
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]uint64{"4096": 4096, "16MiB": 16 << 20, "64M": 64 << 20, "2G": 2 << 30, "8 KiB": 8 << 10, "1GB": 1 << 30} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "0", "-1", "12XB", "M", "99999999999999999999G"} {
		if _, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) accepted", bad)
		}
	}
}

// The gratuitous ARP must be what a Linux neighbour table and a bridge
// learn from: an ARP request, broadcast, from the VM's MAC, whose sender
// and target protocol addresses are both the VM's IP.
func TestGratuitousARP(t *testing.T) {
	mac := [6]byte{2, 0x66, 0x74, 0x76, 0x6d, 1}
	f := gratuitousARP(mac, [4]byte{10, 77, 0, 10})
	be := binary.BigEndian
	if len(f) != 42 || !bytes.Equal(f[0:6], bytes.Repeat([]byte{0xff}, 6)) || !bytes.Equal(f[6:12], mac[:]) || be.Uint16(f[12:]) != 0x0806 {
		t.Fatalf("ethernet header % x", f[:14])
	}
	a := f[14:]
	if be.Uint16(a[0:]) != 1 || be.Uint16(a[2:]) != 0x0800 || a[4] != 6 || a[5] != 4 || be.Uint16(a[6:]) != 1 {
		t.Fatalf("arp header % x", a[:8])
	}
	if !bytes.Equal(a[8:14], mac[:]) || !bytes.Equal(a[14:18], []byte{10, 77, 0, 10}) || !bytes.Equal(a[18:24], make([]byte, 6)) || !bytes.Equal(a[24:28], []byte{10, 77, 0, 10}) {
		t.Fatalf("arp addresses % x", a[8:28])
	}
}

func TestPeerLinkBeforeConnection(t *testing.T) {
	var l peerLink
	if err := l.Send(16, []byte("x")); err == nil || !strings.Contains(err.Error(), "not connected") {
		t.Fatalf("send with no transport: %v", err)
	}
}

// A control socket answers status with JSON that queryStatus reads back,
// refuses unknown requests, and a second daemon cannot take a socket
// that still answers.
func TestControlSocket(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c.sock")
	d := &daemon{cfg: &daemonConfig{control: path}}
	ln, err := d.serveControlWith(map[string]func() any{controlRequestStatus: func() any { return statusReport{VMID: "v", Role: "primary", Epoch: 7} }})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	r, err := queryStatus(context.Background(), path)
	if err != nil || r.VMID != "v" || r.Epoch != 7 || r.Role != "primary" {
		t.Fatalf("status %+v, %v", r, err)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("reboot\n"))
	buf := make([]byte, 512)
	c.SetReadDeadline(time.Now().Add(time.Second))
	n, _ := c.Read(buf)
	c.Close()
	if !strings.Contains(string(buf[:n]), "unknown request") {
		t.Fatalf("unknown request answered %q", buf[:n])
	}
	if _, err := d.serveControlWith(nil); err == nil || !strings.Contains(err.Error(), "another ftvm daemon") {
		t.Fatalf("second daemon on a live socket: %v", err)
	}
	if code, out, errs := runFtvm("status", "--control", path); code != exitOK || !strings.Contains(out, "vm v") || !strings.Contains(out, "epoch 7") {
		t.Fatalf("ftvm status: %d %q %q", code, out, errs)
	}
	ln.Close()
	if code, _, errs := runFtvm("status", "--control", path); code != exitFailure || !strings.Contains(errs, "no ftvm daemon answers") {
		t.Fatalf("ftvm status with no daemon: %d %q", code, errs)
	}
}

// A primary whose --arbiter-dir is on a read-only file system stops with
// a message that says what is wrong, instead of asking the arbiter 33
// times a second forever without a word (issue 15).
func TestDaemonStopsOnReadOnlyArbiterDir(t *testing.T) {
	testutil.Require(t, testutil.Root, testutil.KVM)
	guest := kvstoreGuest(t)
	dir := t.TempDir()
	psk := filepath.Join(dir, "psk")
	os.WriteFile(psk, bytes.Repeat([]byte("k"), 32), 0o600)
	arb := filepath.Join(dir, "arb")
	os.Mkdir(arb, 0o700)
	if err := unix.Mount("tmpfs", arb, "tmpfs", unix.MS_RDONLY, "size=1m"); err != nil {
		t.Fatalf("mounting a read-only tmpfs: %v", err)
	}
	defer unix.Unmount(arb, 0)
	type result struct {
		code int
		errs string
	}
	done := make(chan result, 1)
	go func() {
		code, _, errs := runFtvm("primary", "--arbiter-dir", arb, "--psk-file", psk, "--guest", guest,
			"--control", filepath.Join(dir, "c.sock"), "--listen", "127.0.0.1:0")
		done <- result{code, errs}
	}()
	select {
	case r := <-done:
		if r.code != exitFailure || !strings.Contains(r.errs, "read-only file system") || !strings.Contains(r.errs, "level=ERROR") ||
			!strings.Contains(r.errs, "fix --arbiter-dir") {
			t.Fatalf("exit %d, stderr:\n%s\nwant exit %d with an error naming the read-only file system and what to do", r.code, r.errs, exitFailure)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the primary was still asking a read-only arbiter after a minute")
	}
}

// ftvm status shows an arbiter that cannot be asked, with its error.
func TestStatusShowsArbiterError(t *testing.T) {
	var b bytes.Buffer
	printStatus(&b, &statusReport{VMID: "v", Role: "primary", ArbiterFailures: 4, ArbiterError: "arbiter: open /a/v.arbiter: read-only file system"})
	if out := b.String(); !strings.Contains(out, "WAITING FOR THE ARBITER") || !strings.Contains(out, "4 requests in a row failed") || !strings.Contains(out, "read-only file system") {
		t.Fatalf("status:\n%s\nwant the arbiter's error shown", out)
	}
}

// TestTxFence drives the fence a deposed primary's frames meet: a stall
// longer than half the peer timeout fences the VM's frames, and only proof
// that this host still serves the VM lifts it: an acknowledgement of a
// position logged after the stall, a newer epoch, no secondary that could
// have taken over, or a frame from the peer well after the stall (not the
// ones it sent during the stall, which arrive at once).
func TestTxFence(t *testing.T) {
	// The fence reads the real clock: a peer timeout far above any pause
	// a loaded host puts between two lines of this test, so that the only
	// stalls are the planted ones, 20 peer timeouts long (with 100 ms, a
	// 50 ms pause under load was a stall too).
	const peerTimeout = 5 * time.Second
	protected := lockstep.Status{Role: lockstep.RolePrimary, Protected: true, Epoch: 3, LastSeq: 10, Acked: 9}
	stall := func(f *txFence) {
		f.lastLook.Store(f.now() - int64(20*peerTimeout))
	}
	f := newTxFence(peerTimeout, peerTimeout, peerTimeout/10)
	for range 3 {
		if !f.mayTransmit() {
			t.Fatal("the fence is up without a stall")
		}
	}
	if newStall, lifted := f.tick(protected); newStall || lifted {
		t.Fatalf("tick without a stall: new stall %v, lifted %v", newStall, lifted)
	}

	// Acknowledgements: only one past what was logged at the stall lifts it.
	stall(f)
	if f.mayTransmit() {
		t.Fatal("a frame left after a stall of 20 peer timeouts")
	}
	if newStall, lifted := f.tick(protected); !newStall || lifted {
		t.Fatalf("first tick after the stall: new stall %v, lifted %v; want a new stall, still fenced", newStall, lifted)
	}
	f.peerHeard() // what the peer sent during the stall, read on waking
	st := protected
	st.Acked = 10
	if _, lifted := f.tick(st); lifted || f.mayTransmit() {
		t.Fatal("the fence lifted on an acknowledgement of what was logged before the stall, or on the peer's frames read on waking")
	}
	st.Acked, st.LastSeq = 11, 12
	if _, lifted := f.tick(st); !lifted || !f.mayTransmit() {
		t.Fatal("the fence stayed up after the secondary acknowledged a position logged after the stall")
	}
	if f.Fenced() != 2 {
		t.Fatalf("Fenced = %d, want 2", f.Fenced())
	}

	// A newer epoch lifts it.
	stall(f)
	f.tick(protected)
	st = protected
	st.Epoch = 4
	if _, lifted := f.tick(st); !lifted || !f.mayTransmit() {
		t.Fatal("the fence stayed up once the node held a newer epoch")
	}

	// A primary with no secondary in step at the stall is not fenced.
	stall(f)
	alone := lockstep.Status{Role: lockstep.RolePrimary, Epoch: 3}
	if newStall, lifted := f.tick(alone); !newStall || !lifted || !f.mayTransmit() {
		t.Fatal("the fence held back a lone primary's frames")
	}

	// A frame from the peer well after the stall lifts it.
	stall(f)
	if f.mayTransmit() {
		t.Fatal("a frame left after a stall")
	}
	f.tick(protected)
	f.peerFrame.Store(f.stall.Load() + int64(peerTimeout) + 1)
	if !f.mayTransmit() {
		t.Fatal("the fence stayed up after the peer was heard a peer timeout after the stall")
	}
}

// TestTxFenceWatchdog: the transport's watchdog looks every millisecond
// or so; a gap between its looks longer than half the heartbeat timeout
// (the peer may have taken this host for dead) fences the VM's frames,
// seen either by the watchdog's next look or by a frame that leaves
// first, but only while a watchdog runs: one that stopped with its
// transport is no stall.
func TestTxFenceWatchdog(t *testing.T) {
	const hb = time.Second // far above any pause a loaded host puts between two lines here
	f := newTxFence(100*hb, hb, hb/10)
	f.watched(tcpfallback.WatchdogStarted)
	f.watched(tcpfallback.WatchdogLook)
	if !f.mayTransmit() {
		t.Fatal("fenced without a stall")
	}
	if f.mayBeDeposed() {
		t.Fatal("may be deposed without a stall")
	}
	f.lastWatch.Store(f.now() - int64(hb)) // the watchdog was not run for a heartbeat timeout
	if f.mayTransmit() {
		t.Fatal("a frame left after the watchdog was not run for a heartbeat timeout (seen first by the frame)")
	}
	if !f.mayBeDeposed() || f.mayBeDeposed() {
		t.Fatal("a gap of a heartbeat timeout in the watchdog's looks did not say, once, that the peer may have taken over")
	}
	f.tick(lockstep.Status{Role: lockstep.RolePrimary, Epoch: 3}) // alone: lifted
	if !f.mayTransmit() {
		t.Fatal("the fence held back a lone primary's frames")
	}
	f.watched(tcpfallback.WatchdogLook)
	f.lastWatch.Store(f.now() - int64(hb))
	f.watched(tcpfallback.WatchdogLook)
	if f.stall.Load() == 0 {
		t.Fatal("the watchdog's own late look was no stall")
	}
	f.tick(lockstep.Status{Role: lockstep.RolePrimary, Epoch: 3})
	f.watched(tcpfallback.WatchdogStopped)
	f.lastWatch.Store(f.now() - int64(10*hb))
	if !f.mayTransmit() {
		t.Fatal("fenced because a watchdog that stopped with its transport looked no more")
	}
}

// TestTxFenceHalted: a node that halted after the stall stays fenced.
func TestTxFenceHalted(t *testing.T) {
	f := newTxFence(100*time.Millisecond, 100*time.Millisecond, 10*time.Millisecond)
	f.lastLook.Store(f.now() - int64(time.Second))
	f.tick(lockstep.Status{Role: lockstep.RolePrimary, Protected: true, Epoch: 3, LastSeq: 10})
	if _, lifted := f.tick(lockstep.Status{Role: lockstep.RoleHalted, Epoch: 3, LastSeq: 10}); lifted || f.mayTransmit() {
		t.Fatal("the fence lifted when the node halted")
	}
}

// A control request longer than the limit is answered "request too long",
// not "unknown request" with its first bytes (issue 15).
func TestControlSocketRequestTooLong(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.sock")
	d := &daemon{cfg: &daemonConfig{control: path}}
	ln, err := d.serveControlWith(map[string]func() any{controlRequestStatus: func() any { return statusReport{} }})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte(strings.Repeat("s", 4*controlRequestMax) + "\n"))
	buf := make([]byte, 512)
	c.SetReadDeadline(time.Now().Add(time.Second))
	n, _ := c.Read(buf)
	if got := string(buf[:n]); !strings.Contains(got, "request too long") || !strings.Contains(got, "256") {
		t.Fatalf("a %d-byte request answered %q; want \"request too long\" with the limit", 4*controlRequestMax, got)
	}
}

// A guest that is not an ELF file is refused before "started" is logged,
// with its path, size and what it looks like (issue 15).
func TestDaemonRefusesANonELFGuest(t *testing.T) {
	dir := t.TempDir()
	psk := filepath.Join(dir, "psk")
	os.WriteFile(psk, bytes.Repeat([]byte("k"), 32), 0o600)
	for name, content := range map[string][]byte{"empty": nil, "script": []byte("#!/bin/sh\necho hi\n")} {
		guest := filepath.Join(dir, name)
		os.WriteFile(guest, content, 0o644)
		code, _, errs := runFtvm("primary", "--arbiter-dir", filepath.Join(dir, "arb"), "--psk-file", psk, "--guest", guest,
			"--control", filepath.Join(dir, "c.sock"), "--listen", "127.0.0.1:0")
		if code != exitFailure || strings.Contains(errs, "msg=started") || !strings.Contains(errs, guest) ||
			!strings.Contains(errs, fmt.Sprintf("%d bytes", len(content))) || !strings.Contains(errs, "make guests") {
			t.Errorf("guest %s: exit %d, stderr %q; want a refusal before start naming the file, its size and how to build one", name, code, errs)
		}
		if name == "empty" && !strings.Contains(errs, "empty") {
			t.Errorf("empty guest: %q does not say it is empty", errs)
		}
		if name == "script" && !strings.Contains(errs, "#!/bin/sh") {
			t.Errorf("script guest: %q does not show how it begins", errs)
		}
	}
}

// fakeArbiter grants every epoch and counts the requests.
type fakeArbiter struct{ asked int }

func (a *fakeArbiter) Acquire(context.Context, string, uint64) (bool, uint64, error) {
	a.asked++
	return true, 7, nil
}

// TestReachArbiter: while the VM's network does not answer, the arbiter is
// not asked and the request fails (the node asks again); once it answers,
// the request goes through.
func TestReachArbiter(t *testing.T) {
	r := &reachability{targets: []netip.Addr{netip.MustParseAddr("10.0.0.1")}, interval: time.Millisecond, lostAfter: 20 * time.Millisecond, base: time.Now().Add(-time.Hour)}
	inner := &fakeArbiter{}
	a := &reachArbiter{inner: inner, reach: r, log: slog.New(slog.DiscardHandler)}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if granted, _, err := a.Acquire(ctx, "vm", 2); granted || err == nil || inner.asked != 0 {
		t.Fatalf("no reply ever: granted %v, err %v, arbiter asked %d times; want an error and no request", granted, err, inner.asked)
	}
	r.lastReply.Store(int64(time.Since(r.base)) - int64(time.Second)) // the last reply, a second ago
	ctx2, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	if _, _, err := a.Acquire(ctx2, "vm", 2); err == nil || inner.asked != 0 {
		t.Fatalf("network lost a second ago: err %v, arbiter asked %d times", err, inner.asked)
	}
	// Replies keep coming, as from the prober: one stored once would be
	// lost again 20 ms later, which a loaded host may let pass before
	// Acquire looks.
	answering := make(chan struct{})
	replies := make(chan struct{})
	go func() {
		defer close(replies)
		for {
			r.lastReply.Store(int64(time.Since(r.base)))
			select {
			case <-answering:
				return
			case <-time.After(r.interval):
			}
		}
	}()
	granted, fence, err := a.Acquire(context.Background(), "vm", 2)
	close(answering)
	<-replies
	if !granted || fence != 7 || err != nil || inner.asked != 1 {
		t.Fatalf("network answers: granted %v fence %d err %v, asked %d; want the arbiter's grant", granted, fence, err, inner.asked)
	}
	r.link = "ftvm-no-such-link0"
	ctx3, cancel3 := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel3()
	if _, _, err := a.Acquire(ctx3, "vm", 3); err == nil || inner.asked != 1 {
		t.Fatalf("uplink without carrier: err %v, asked %d", err, inner.asked)
	}
}

func TestEchoRequestChecksum(t *testing.T) {
	b := echoRequest(0x1234, 7)
	if netframe.Checksum(b) != 0 {
		t.Fatalf("echo request %x: checksum over it is %#x, want 0", b, netframe.Checksum(b))
	}
	reply := append(make([]byte, 20), b...)
	reply[0] = 0x45
	reply[20] = 0 // echo reply, its checksum made again: a reply must verify
	reply[22], reply[23] = 0, 0
	binary.BigEndian.PutUint16(reply[22:], netframe.Checksum(reply[20:]))
	if !isEchoReply(reply, 0x1234) || isEchoReply(reply, 0x1235) {
		t.Fatal("isEchoReply does not match the id")
	}
}
