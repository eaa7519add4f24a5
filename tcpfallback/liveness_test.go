package tcpfallback

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// livenessChildEnv makes the test binary a helper process (see
// TestLivenessChild) holding one or both ends of a pair, so that a test
// can stop it with SIGSTOP as a host that freezes would be stopped.
const livenessChildEnv = "FTVM_TCPFALLBACK_LIVENESS_CHILD"

// livenessConfig: the default heartbeat interval and timeout.
func livenessConfig(s *sink) Config {
	c := testConfig(s)
	c.HeartbeatInterval, c.HeartbeatTimeout = DefaultHeartbeatInterval, DefaultHeartbeatTimeout
	c.ReconnectMinDelay, c.ReconnectMaxDelay = time.Second, time.Second
	return c
}

// TestLivenessChild is not a test: run by startLivenessChild, it holds a
// pair ("pair": both ends, in this one process) or a listener ("listen")
// and answers on stdout.
func TestLivenessChild(t *testing.T) {
	mode := os.Getenv(livenessChildEnv)
	if mode == "" {
		return // an ordinary run: nothing to do
	}
	in := bufio.NewScanner(os.Stdin)
	switch mode {
	case "pair":
		d, l, _, _ := pair(t, func(c *Config) { *c = livenessConfig(newSink()) })
		fmt.Println("ready")
		in.Scan() // the parent is done stopping this process
		var losses uint64
		for _, tr := range []*Transport{d, l} {
			for _, ls := range tr.Stats().Lanes {
				losses += ls.Losses
			}
		}
		lv := d.Liveness()
		fmt.Printf("losses=%d stalls=%d owngapmax=%v silencemax=%v\n", losses, lv.OwnStalls, lv.OwnGapMax, lv.PeerSilenceMax)
	case "listen":
		l := listen(t, livenessConfig(newSink()))
		fmt.Println(l.Addr())
		in.Scan()
	}
	os.Exit(0)
}

// startLivenessChild starts the helper in mode and returns it with its
// first line of output.
func startLivenessChild(t *testing.T, mode string) (*exec.Cmd, *bufio.Scanner, func(string), string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestLivenessChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), livenessChildEnv+"="+mode)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGCONT)
		cmd.Process.Kill()
		cmd.Wait()
	})
	out := bufio.NewScanner(stdout)
	if !out.Scan() {
		t.Fatalf("the %s helper said nothing: %v", mode, out.Err())
	}
	say := func(s string) { fmt.Fprintln(stdin, s) }
	return cmd, out, say, out.Text()
}

// A pause of the whole host (here: of the one process holding both ends,
// stopped with SIGSTOP for far longer than the heartbeat timeout) is not a
// loss: each watchdog counts silence only while it runs itself, and once
// both run again each hears the other within a heartbeat interval. A
// watchdog that counted the wall-clock gap would declare both lanes dead
// on both sides at its first look after the pause.
func TestWholeHostPauseIsNotALoss(t *testing.T) {
	cmd, out, say, _ := startLivenessChild(t, "pair")
	const pauses, pause = 3, 20 * DefaultHeartbeatTimeout
	for range pauses {
		time.Sleep(50 * time.Millisecond)
		if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		time.Sleep(pause)
		if err := cmd.Process.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(10 * DefaultHeartbeatTimeout) // for a late declaration to happen
	say("done")
	if !out.Scan() {
		t.Fatalf("the helper gave no result: %v", out.Err())
	}
	res := out.Text()
	t.Logf("after %d pauses of %v: %s", pauses, pause, res)
	var losses, stalls uint64
	var gapMax string
	if _, err := fmt.Sscanf(res, "losses=%d stalls=%d owngapmax=%s", &losses, &stalls, &gapMax); err != nil {
		t.Fatalf("helper said %q: %v", res, err)
	}
	if stalls < pauses {
		t.Fatalf("the watchdog saw %d stalls of its own in %d pauses: the pauses did not reach it, so this run tests nothing", stalls, pauses)
	}
	if losses != 0 {
		t.Errorf("%d lanes declared lost after pauses of the whole process: the watchdog counted time it was not run as the peer's silence", losses)
	}
}

// A peer that freezes (SIGSTOP: its sockets stay open, it sends nothing)
// is declared dead after the heartbeat timeout of silence, with a
// HeartbeatTimeoutError, on every lane.
func TestFrozenPeerDeclaredDead(t *testing.T) {
	cmd, _, _, addr := startLivenessChild(t, "listen")
	d := dial(t, strings.TrimSpace(addr), livenessConfig(newSink()))
	time.Sleep(20 * DefaultHeartbeatInterval)
	drainEvents(d)
	stopped := time.Now()
	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	downs := waitLanesDown(t, d)
	for lane, ev := range downs {
		var he *HeartbeatTimeoutError
		if !errors.As(ev.Err, &he) {
			t.Fatalf("%s lane down with %v, want a heartbeat timeout", Lane(lane), ev.Err)
		}
		if he.Silent <= DefaultHeartbeatTimeout {
			t.Errorf("%s lane declared dead after %v of silence, not more than the timeout %v", Lane(lane), he.Silent, DefaultHeartbeatTimeout)
		}
		t.Logf("%s lane: declared dead %v after the SIGSTOP (counted silence %v, timeout %v)", Lane(lane), ev.Time.Sub(stopped), he.Silent, he.Timeout)
	}
	lv := d.Liveness()
	t.Logf("watchdog: realtime %v (%s), own gaps %s, silences %s", lv.Realtime, lv.RealtimeError, lv.OwnGap, lv.PeerSilence)
}

// A peer whose frames wait unread in this side's sockets is alive: here
// OnFrame holds both lanes' readers for many heartbeat timeouts, the
// peer's heartbeats pile up in the kernel, and the watchdog, seeing them
// arrive (SIOCINQ), declares nothing dead.
func TestUnreadBytesCountAsAlive(t *testing.T) {
	const interval, timeout, hold = 5 * time.Millisecond, 40 * time.Millisecond, 400 * time.Millisecond
	held := make(chan struct{}, 2)
	mk := func(s *sink) Config {
		c := testConfig(s)
		c.HeartbeatInterval, c.HeartbeatTimeout = interval, timeout
		c.ReconnectMinDelay, c.ReconnectMaxDelay = time.Second, time.Second
		return c
	}
	ls := newSink()
	lc := mk(ls)
	lc.OnFrame = func(f Frame) {
		ls.on(f)
		held <- struct{}{}
		time.Sleep(hold)
	}
	l := listen(t, lc)
	d := dial(t, l.Addr(), mk(newSink()))
	waitConnected(t, l)
	drainEvents(l)
	if err := d.Send(TypeLog, []byte("hold the control lane's reader")); err != nil {
		t.Fatal(err)
	}
	if err := d.Send(TypeCheckpoint, []byte("hold the bulk lane's reader")); err != nil {
		t.Fatal(err)
	}
	<-held
	<-held
	time.Sleep(hold + timeout)
	noLaneDown(t, l, "the peer was declared dead while its heartbeats waited unread")
	if n := l.Stats().Lanes[LaneControl].HeartbeatTimeouts + l.Stats().Lanes[LaneBulk].HeartbeatTimeouts; n != 0 {
		t.Fatalf("%d heartbeat timeouts while the readers were held", n)
	}
}

// SetHeartbeatTimeout changes the timeout at once, both ways: a freeze far
// past the configured timeout is no loss under a longer one, and after
// going back to the configured one, the next freeze is.
func TestSetHeartbeatTimeout(t *testing.T) {
	cmd, _, _, addr := startLivenessChild(t, "listen")
	d := dial(t, strings.TrimSpace(addr), livenessConfig(newSink()))
	d.SetHeartbeatTimeout(50 * DefaultHeartbeatTimeout)
	if got := d.HeartbeatTimeout(); got != 50*DefaultHeartbeatTimeout {
		t.Fatalf("HeartbeatTimeout %v after SetHeartbeatTimeout(%v)", got, 50*DefaultHeartbeatTimeout)
	}
	time.Sleep(20 * DefaultHeartbeatInterval)
	drainEvents(d)
	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * DefaultHeartbeatTimeout)
	if err := cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * DefaultHeartbeatTimeout)
	for _, ls := range d.Stats().Lanes {
		if ls.Losses != 0 {
			t.Fatalf("a lane was lost over a freeze of 10 configured timeouts under a timeout of 50: %+v", d.Stats().Lanes)
		}
	}
	d.SetHeartbeatTimeout(0)
	if got := d.HeartbeatTimeout(); got != DefaultHeartbeatTimeout {
		t.Fatalf("HeartbeatTimeout %v after SetHeartbeatTimeout(0), want Config's %v", got, DefaultHeartbeatTimeout)
	}
	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	for lane, ev := range waitLanesDown(t, d) {
		var he *HeartbeatTimeoutError
		if !errors.As(ev.Err, &he) || he.Timeout != DefaultHeartbeatTimeout {
			t.Fatalf("%s lane down with %v, want a heartbeat timeout of %v", Lane(lane), ev.Err, DefaultHeartbeatTimeout)
		}
	}
}

// A reader of the watchdog's statistics that is not run while it holds
// them (ftvm status asking, its thread preempted by the watchdog's own
// wake-up and then left waiting behind busy threads of normal priority,
// which on a loaded 2-core host is 100 ms or more) must not stop the
// heartbeats: a watchdog thread that waited for it sent none, the peer
// counted the silence, and a 10-minute soak failed over with no fault.
// Here the statistics are held for several heartbeat timeouts while a
// peer in another process watches; it must declare nothing dead.
func TestHeldStatisticsDoNotStopHeartbeats(t *testing.T) {
	_, _, _, addr := startLivenessChild(t, "listen")
	d := dial(t, strings.TrimSpace(addr), livenessConfig(newSink()))
	waitConnected(t, d)
	time.Sleep(20 * DefaultHeartbeatInterval)
	drainEvents(d)
	release := holdLivenessStats(d)
	time.Sleep(6 * DefaultHeartbeatTimeout)
	release()
	time.Sleep(4 * DefaultHeartbeatTimeout) // for a late loss to show
	noLaneDown(t, d, "the peer dropped this side while its watchdog statistics were held")
	lv := d.Liveness()
	if lv.OwnGap.Above(0) == 0 {
		t.Fatalf("the watchdog made no looks: %+v", lv)
	}
	t.Logf("watchdog: own gaps %s (max %v), silences %s", lv.OwnGap, lv.OwnGapMax, lv.PeerSilence)
}
