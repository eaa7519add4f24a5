package agent

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftvm/ftvm/internal/testutil"
	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/lockstep/arbiter"
	"github.com/ftvm/ftvm/lockstep/wire"
	"github.com/ftvm/ftvm/tcpfallback"
	"github.com/ftvm/ftvm/vmm"
)

// The KVM tests run a primary and a secondary agent in one process, each
// with its own vmm.Machine, joined by a real tcpfallback transport over
// loopback (PSK), with a file arbiter in a temporary directory.

const (
	testVMID     = "agent-test"
	testMemBytes = 16 << 20
	// testRunTimeout bounds a whole pair run; the kvmbox is a TCG guest,
	// so everything in it is slow.
	testRunTimeout = 240 * time.Second
)

var _ Transport = (*tcpfallback.Transport)(nil)

var testPSK = []byte("agent-test-psk-32-bytes-long!!!!")

func guestImage(t *testing.T, name string) []byte {
	t.Helper()
	testutil.Require(t, testutil.KVM)
	dir := os.Getenv("FTVM_GUEST_DIR")
	if dir == "" {
		dir = filepath.Join("..", "vmm", "guests", "build")
	}
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		testutil.SkipMissing(t, fmt.Errorf("guest %s not built (%v): run make guests or set FTVM_GUEST_DIR", name, err), testutil.KVM)
	}
	return b
}

// lockedBuffer is a console that tests read while the VM writes.
type lockedBuffer = testutil.Buffer

// liveRun is the reference: the guest run once, live, without ftvm.
func liveRun(t *testing.T, image []byte, cmdline string) string {
	t.Helper()
	var out lockedBuffer
	m, err := vmm.New(vmm.Config{MemSizeBytes: testMemBytes, Console: &out, Cmdline: cmdline})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Load(image); err != nil {
		t.Fatal(err)
	}
	if st, err := m.Run(0); err != nil || st.State != vmm.Halted {
		t.Fatalf("live reference run: %+v %v", st, err)
	}
	return out.String()
}

type pair struct {
	pri, sec       *Agent
	priTr, secTr   *tcpfallback.Transport
	priOut, secOut lockedBuffer
	priErr, secErr chan error

	mu       sync.Mutex
	replayed [][]byte // console outputs the secondary's VM produced, in order
	released [][]byte // console outputs the primary released, in order
	bad      []string // violations seen at release time
}

func nodeConfig(role wire.Role, mode lockstep.Mode, window int) lockstep.Config {
	// Ticks of 20ms and a 3s peer timeout: the kvmbox's TCG vCPUs can
	// stall a process for a good part of a second.
	return lockstep.Config{VMID: testVMID, Role: role, Mode: mode, HeartbeatTicks: 5, RetransmitTicks: 10, PeerTimeoutTicks: 150, LogWindowEntries: window}
}

const testTick = 20 * time.Millisecond

// startPair starts a secondary, then a primary that waits for it.
func startPair(t *testing.T, ctx context.Context, mode lockstep.Mode, window int, image []byte, cmdline string) *pair {
	return startPairWith(t, ctx, mode, window, image, cmdline, nil)
}

// startPairWith lets devices be added to each side's VM config.
func startPairWith(t *testing.T, ctx context.Context, mode lockstep.Mode, window int, image []byte, cmdline string, devices func(role wire.Role, c *vmm.Config)) *pair {
	t.Helper()
	return startPairConfig(t, ctx, mode, window, image, cmdline, devices, nil)
}

// startPairConfig lets each side's agent config be changed too.
func startPairConfig(t *testing.T, ctx context.Context, mode lockstep.Mode, window int, image []byte, cmdline string, devices func(role wire.Role, c *vmm.Config), agentCfg func(role wire.Role, c *Config)) *pair {
	t.Helper()
	configure := func(role wire.Role, c Config) Config {
		if agentCfg != nil {
			agentCfg(role, &c)
		}
		return c
	}
	arb, err := arbiter.NewFile(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	p := &pair{priErr: make(chan error, 1), secErr: make(chan error, 1)}
	newVM := func(out *lockedBuffer) func(vmm.ExitHook) (VM, error) {
		role := wire.RolePrimary
		if out == &p.secOut {
			role = wire.RoleSecondary
		}
		return func(h vmm.ExitHook) (VM, error) {
			c := vmm.Config{MemSizeBytes: testMemBytes, Console: out, Hook: h, Cmdline: cmdline}
			if devices != nil {
				devices(role, &c)
			}
			return vmm.New(c)
		}
	}
	p.sec, err = New(configure(wire.RoleSecondary, Config{
		Node: nodeConfig(wire.RoleSecondary, mode, window), NewVM: newVM(&p.secOut), Arbiter: arb, TickInterval: testTick,
		OnReplayed: func(_ uint64, dev vmm.Device, data []byte) {
			if dev != vmm.DeviceConsole {
				return
			}
			p.mu.Lock()
			p.replayed = append(p.replayed, bytes.Clone(data))
			p.mu.Unlock()
		},
	}))
	if err != nil {
		t.Fatal(err)
	}
	p.secTr, err = tcpfallback.Listen("127.0.0.1:0", tcpfallback.Config{VMID: testVMID, PSK: testPSK, OnFrame: p.sec.HandleFrame})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.secTr.Close() })
	p.pri, err = New(configure(wire.RolePrimary, Config{
		Node: nodeConfig(wire.RolePrimary, mode, window), NewVM: newVM(&p.priOut), Arbiter: arb, TickInterval: testTick,
		WaitForSecondary: true,
		Boot:             func(vm VM) error { return vm.(*vmm.Machine).Load(image) },
		OnRelease:        p.checkRelease(mode),
	}))
	if err != nil {
		t.Fatal(err)
	}
	p.priTr, err = tcpfallback.Dial(ctx, p.secTr.Addr(), tcpfallback.Config{VMID: testVMID, PSK: testPSK, OnFrame: p.pri.HandleFrame})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.priTr.Close() })
	go func() { p.secErr <- p.sec.Run(ctx, p.secTr) }()
	go func() { p.priErr <- p.pri.Run(ctx, p.priTr) }()
	return p
}

// checkRelease checks, as each primary output is released, that the
// secondary has done what the mode requires: received every log item
// before it (ack-on-receipt) or reproduced the same output (ack-on-compare).
func (p *pair) checkRelease(mode lockstep.Mode) func(lockstep.Output) {
	return func(o lockstep.Output) {
		if o.Device>>8 != uint16(vmm.DeviceConsole) {
			return
		}
		data := o.Data[outputHeaderBytes:]
		// Read before p.mu: the secondary's hook holds its agent's lock
		// while it takes p.mu (OnReplayed). LastSeq only grows, so an
		// earlier reading is still a bound.
		secReceived := p.sec.Status().LastSeq
		p.mu.Lock()
		defer p.mu.Unlock()
		k := len(p.released)
		p.released = append(p.released, bytes.Clone(data))
		switch mode {
		case lockstep.AckOnCompare:
			if k >= len(p.replayed) {
				p.bad = append(p.bad, fmt.Sprintf("console output %d (seq %d) released before the secondary reproduced it (it has %d)", k, o.Seq, len(p.replayed)))
			} else if !bytes.Equal(p.replayed[k], data) {
				p.bad = append(p.bad, fmt.Sprintf("console output %d: primary released %q, secondary reproduced %q", k, data, p.replayed[k]))
			}
		case lockstep.AckOnReceipt:
			if got := secReceived; got+1 < o.Seq {
				p.bad = append(p.bad, fmt.Sprintf("output seq %d released while the secondary has received only through seq %d", o.Seq, got))
			}
		}
	}
}

// stopSecondary stops the secondary, fails the test if its Run failed,
// and returns the console bytes its VM reproduced and those the primary
// released, for the caller to compare.
func (p *pair) stopSecondary(t *testing.T) (replayed, released []byte) {
	t.Helper()
	p.sec.Stop()
	if err := waitErr(t, "secondary", p.secErr); err != nil {
		t.Fatalf("secondary: %v", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return bytes.Join(p.replayed, nil), bytes.Join(p.released, nil)
}

func (p *pair) violations() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.bad...)
}

func waitErr(t *testing.T, what string, ch chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(testRunTimeout):
		t.Fatalf("%s did not finish within %v", what, testRunTimeout)
		return nil
	}
}

const memstressCmdline = "pages=32 iters=120 dirty=4 pattern=stride stride=5 seed=7"

func TestKVMPairMemstress(t *testing.T) {
	image := guestImage(t, "memstress")
	want := liveRun(t, image, memstressCmdline)
	for _, c := range []struct {
		mode   lockstep.Mode
		window int // log items; small enough to stall the primary
	}{{lockstep.AckOnReceipt, 0}, {lockstep.AckOnCompare, 0}, {lockstep.AckOnCompare, 2}} {
		mode := c.mode
		t.Run(fmt.Sprintf("%s/window=%d", mode, c.window), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), testRunTimeout)
			defer cancel()
			p := startPair(t, ctx, mode, c.window, image, memstressCmdline)
			if err := waitErr(t, "primary", p.priErr); err != nil {
				t.Fatalf("primary: %v", err)
			}
			if got := p.priOut.String(); got != want {
				t.Fatalf("primary's released console differs from a live run:\n got %q\nwant %q", tail(got), tail(want))
			}
			// The secondary replays on after the primary's last release
			// in ack-on-receipt; give it time to reach the end.
			deadline := time.Now().Add(testRunTimeout / 2)
			for {
				p.mu.Lock()
				n, m := len(p.replayed), len(p.released)
				p.mu.Unlock()
				if n >= m || time.Now().After(deadline) {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			replayed, released := p.stopSecondary(t)
			if !bytes.Equal(replayed, released) {
				t.Fatalf("secondary reproduced %d console bytes, primary released %d; they differ", len(replayed), len(released))
			}
			if v := p.violations(); len(v) > 0 {
				t.Fatalf("%d releases broke %s, first: %s", len(v), mode, v[0])
			}
			if p.secOut.String() != "" {
				t.Fatalf("a secondary released console output while its primary lived: %q", tail(p.secOut.String()))
			}
			if c.window != 0 && p.pri.Stats().Stalls == 0 {
				t.Fatalf("a log window of %d items never stalled the primary", c.window)
			}
			t.Logf("%s: %d console outputs, primary %+v, secondary %+v", mode, len(p.released), p.pri.Stats(), p.sec.Stats())
		})
	}
}

const failoverCmdline = "pages=32 iters=4000 dirty=4 pattern=stride stride=5 seed=11"

// TestKVMFailover stops the primary (agent, VM and transport) in mid-run:
// the secondary must take over through the arbiter and finish the run so
// that the world sees one execution: the primary's released console, then
// the secondary's, equals a single live run, with at most a repeat of what
// the primary may have released without the secondary knowing.
func TestKVMFailover(t *testing.T) {
	image := guestImage(t, "memstress")
	want := liveRun(t, image, failoverCmdline)
	for _, mode := range []lockstep.Mode{lockstep.AckOnReceipt, lockstep.AckOnCompare} {
		t.Run(mode.String(), func(t *testing.T) { failover(t, mode, image, want) })
	}
}

func failover(t *testing.T, mode lockstep.Mode, image []byte, want string) {
	ctx, cancel := context.WithTimeout(context.Background(), testRunTimeout)
	defer cancel()
	p := startPair(t, ctx, mode, 0, image, failoverCmdline)
	// Late enough that heartbeats have told the secondary what the
	// primary released (at least one per HeartbeatTicks): the repeat at
	// take-over must then be shorter than everything.
	const linesBeforeKill = 1500
	deadline := time.Now().Add(testRunTimeout / 2)
	for strings.Count(p.priOut.String(), "\n") < linesBeforeKill || p.sec.Status().Released == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the primary released only %d lines, the secondary heard of releases through %d", strings.Count(p.priOut.String(), "\n"), p.sec.Status().Released)
		}
		select {
		case err := <-p.priErr:
			t.Fatalf("the primary finished before it was stopped (%v): give the guest more iterations", err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	p.pri.Stop()
	p.priTr.Close()
	if err := waitErr(t, "primary", p.priErr); err != nil {
		t.Fatalf("stopped primary: %v", err)
	}
	primaryOut := p.priOut.String()
	if err := waitErr(t, "secondary", p.secErr); err != nil {
		t.Fatalf("secondary taking over: %v", err)
	}
	st := p.sec.Status()
	if st.Role != lockstep.RolePrimary || st.Epoch < 2 {
		t.Fatalf("secondary finished as %s in epoch %d; want primary in epoch >= 2", st.Role, st.Epoch)
	}
	secondaryOut := p.secOut.String()
	repeated, err := oneExecution(primaryOut, secondaryOut, want)
	if err != nil {
		t.Fatal(err)
	}
	if repeated >= len(primaryOut) {
		t.Fatalf("the new primary repeated all %d bytes the old one released: it never learned what was out (heartbeats' ReleasedThrough, Ready.Drop)", repeated)
	}
	t.Logf("primary released %d bytes, secondary %d, of which %d repeat the primary's last; primary %+v, secondary %+v", len(primaryOut), len(secondaryOut), repeated, p.pri.Stats(), p.sec.Stats())
}

// oneExecution checks that first then second shows the world the single
// execution want: first is a prefix of want, and second continues it,
// possibly repeating a tail of first (outputs the old primary released
// that the new one could not know were out).
func oneExecution(first, second, want string) (repeated int, err error) {
	if !strings.HasPrefix(want, first) {
		return 0, fmt.Errorf("the first primary released output no live run shows:\n got %q\nwant a prefix of %q", tail(first), tail(want))
	}
	for rep := 0; rep <= min(len(first), len(second)); rep++ {
		if strings.HasSuffix(first, second[:rep]) && first+second[rep:] == want {
			return rep, nil
		}
	}
	return 0, fmt.Errorf("the second primary's output does not continue the first's:\nfirst ends %q\nsecond begins %q\nwant %q", tail(first), head(second), want[min(len(first), len(want)):min(len(first)+200, len(want))])
}

func tail(s string) string { return s[max(0, len(s)-200):] }
func head(s string) string { return s[:min(200, len(s))] }

func TestOneExecutionCatchesLossAndRepeat(t *testing.T) {
	want := "a\nb\nc\nd\n"
	ok := []struct{ first, second string }{
		{"a\nb\n", "c\nd\n"},
		{"a\nb\n", "b\nc\nd\n"}, // a repeat of the last released line
		{"", "a\nb\nc\nd\n"},
	}
	for _, c := range ok {
		if _, err := oneExecution(c.first, c.second, want); err != nil {
			t.Errorf("%q + %q: %v", c.first, c.second, err)
		}
	}
	bad := []struct{ first, second string }{
		{"a\nb\n", "d\n"},       // c lost
		{"a\nb\n", "a\nc\nd\n"}, // a repeat that is not a tail
		{"a\nx\n", "c\nd\n"},    // the first primary said something else
		{"a\nb\n", "c\nd\nd\n"}, // an extra output at the end
	}
	for _, c := range bad {
		if _, err := oneExecution(c.first, c.second, want); err == nil {
			t.Errorf("%q + %q passed", c.first, c.second)
		}
	}
}
