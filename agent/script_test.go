package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/lockstep/arbiter"
	"github.com/ftvm/ftvm/lockstep/wire"
	"github.com/ftvm/ftvm/tcpfallback"
	"github.com/ftvm/ftvm/vmm"
)

// These tests run on any host: the VM is scriptVM, a stand-in for the
// vCPU side that walks a fixed program of exits and calls the agent's hook
// logic as a vmm.Machine would, with pause, resume, snapshot and restore.
// Everything else is real: two agents, lockstep nodes, a tcpfallback
// transport over loopback and a file arbiter. The KVM tests (kvm_test.go)
// do the same with real VMs in the kvmbox.

// scriptVM runs the program: exit 2i reads the clock (an input, which the
// VM's own clock answers live), exit 2i+1 writes "line i clock c" to the
// console (an output that depends on the input), and the last exit halts.
type scriptVM struct {
	hook  func(exitReq) (vmm.Result, error)
	lines uint64
	clock func() uint64 // this host's clock: differs between hosts
	// clockAdj is added to clock once a snapshot with a clock has been
	// restored: the guest's clock reads on from the snapshot's, at this
	// host's rate, as vmm's clock device does.
	clockAdj uint64
	out      *backend
	// glitchLine, when nonzero, makes this VM print another line there:
	// nondeterminism the log does not capture (an RDTSC, say).
	glitchLine uint64
	// glitchInput moves the glitch to the clock read before that line:
	// the VM asks with another argument than the primary's did.
	glitchInput bool
	// onRestore, when set, sees every snapshot restored into this VM.
	onRestore func(*vmm.Snapshot)

	mu       sync.Mutex
	cond     *sync.Cond
	state    vmm.State
	next     uint64 // next exit index
	lastTime uint64 // the guest's register: the last clock value it read
	pauseReq bool
	err      error
	closed   bool
	done     chan struct{}
}

func newScriptVM(hook func(exitReq) (vmm.Result, error), lines uint64, clock func() uint64, out *backend) *scriptVM {
	v := &scriptVM{hook: hook, lines: lines, clock: clock, out: out, state: vmm.Paused, done: make(chan struct{})}
	v.cond = sync.NewCond(&v.mu)
	go v.run()
	return v
}

func (v *scriptVM) lastExit() uint64 { return 2 * v.lines }

func (v *scriptVM) run() {
	defer close(v.done)
	for {
		v.mu.Lock()
		for v.state != vmm.Running && !v.closed {
			v.cond.Wait()
		}
		if v.closed {
			v.mu.Unlock()
			return
		}
		x := &scriptExit{vm: v, idx: v.next, last: v.lastTime}
		v.mu.Unlock()
		res, err := v.hook(x)
		v.mu.Lock()
		switch {
		case err != nil:
			v.state, v.err = vmm.Failed, err
		case x.idx == v.lastExit():
			v.next++
			v.state = vmm.Halted
		default:
			if x.idx%2 == 0 {
				v.lastTime = res.Value
			}
			v.next++
			if v.pauseReq {
				v.state, v.pauseReq = vmm.Paused, false
			}
		}
		v.cond.Broadcast()
		v.mu.Unlock()
	}
}

func (v *scriptVM) Resume(uint64) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.state != vmm.Paused {
		return fmt.Errorf("cannot resume a %s VM", v.state)
	}
	v.state = vmm.Running
	v.cond.Broadcast()
	return nil
}

func (v *scriptVM) Pause() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.state == vmm.Running {
		v.pauseReq = true
		for v.state == vmm.Running {
			v.cond.Wait()
		}
	}
	return nil
}

// Snapshot keeps the program counter in NextExit, the guest's register
// in ExitCode and whether it halted: all the state this VM has. Like
// vmm.Machine, a VM restored from a halted snapshot is Halted and never
// runs again (a checkpoint can be taken after the primary's guest exited).
func (v *scriptVM) Snapshot(vmm.SnapshotKind) (*vmm.Snapshot, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.state == vmm.Running {
		return nil, errors.New("snapshot of a running VM")
	}
	return v.snapshotLocked(), nil
}

// SnapshotLive is Snapshot of a VM that may be running: the script's
// state between two exits, which a later paused snapshot supersedes.
func (v *scriptVM) SnapshotLive(vmm.SnapshotKind) (*vmm.Snapshot, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.snapshotLocked(), nil
}

// snapshotLocked is all the state this VM has; v.mu held.
func (v *scriptVM) snapshotLocked() *vmm.Snapshot {
	// The clock device's state: version 1, then the guest's clock (here
	// the last value the guest read), set through SetClockNs.
	clock := []vmm.DeviceState{{Device: vmm.DeviceClock, State: make([]byte, 9)}}
	clock[0].State[0] = 1
	s := &vmm.Snapshot{Kind: vmm.Full, Halted: v.state == vmm.Halted, MemSize: 8 << 20, NextExit: v.next, ExitCode: v.lastTime, VCPUs: make([]vmm.VCPUState, 1), Devices: clock}
	if !s.SetClockNs(v.lastTime) {
		panic("the script VM's clock state is not vmm's")
	}
	return s
}

func (v *scriptVM) Restore(s *vmm.Snapshot) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.onRestore != nil {
		v.onRestore(s)
	}
	v.next, v.lastTime = s.NextExit, s.ExitCode
	if ns, ok := s.ClockNs(); ok {
		v.clockAdj = ns - v.clock()
	}
	if s.Halted {
		v.state = vmm.Halted
	}
	return nil
}

// Deliver performs an output a checkpoint carried, as Release of a held
// one would.
func (v *scriptVM) Deliver(d vmm.Device, _ uint32, _ uint64, data []byte) error {
	if d == vmm.DeviceConsole {
		v.out.deliver(bytes.Clone(data))
	}
	return nil
}

func (v *scriptVM) Status() vmm.Status {
	v.mu.Lock()
	defer v.mu.Unlock()
	return vmm.Status{State: v.state, Exits: v.next, Err: v.err}
}

func (v *scriptVM) Close() error {
	v.mu.Lock()
	v.closed = true
	v.cond.Broadcast()
	v.mu.Unlock()
	<-v.done
	return nil
}

type scriptExit struct {
	vm   *scriptVM
	idx  uint64
	last uint64
}

func (x *scriptExit) info() exitInfo {
	switch {
	case x.idx == x.vm.lastExit():
		return exitInfo{Index: x.idx, Device: vmm.DeviceHalt, Op: vmm.OpHaltExit, Dir: vmm.DirOutput}
	case x.idx%2 == 0:
		var arg uint64
		if g := x.vm.glitchLine; g != 0 && x.idx/2 == g && x.vm.glitchInput {
			arg = 1
		}
		return exitInfo{Index: x.idx, Device: vmm.DeviceClock, Op: vmm.OpClockNow, Dir: vmm.DirInput, Arg: arg}
	}
	line := fmt.Sprintf("line %d clock %d\n", x.idx/2, x.last)
	if g := x.vm.glitchLine; g != 0 && x.idx/2 == g && !x.vm.glitchInput {
		line = fmt.Sprintf("line %d glitch\n", g)
	}
	return exitInfo{Index: x.idx, Device: vmm.DeviceConsole, Op: vmm.OpConsoleWrite, Dir: vmm.DirOutput, Data: []byte(line), Len: uint32(len(line))}
}

func (x *scriptExit) live() (vmm.Result, error) {
	x.vm.mu.Lock()
	adj := x.vm.clockAdj
	x.vm.mu.Unlock()
	return vmm.Result{Value: x.vm.clock() + adj}, nil
}

func (x *scriptExit) hold() (heldOutput, error) {
	in := x.info()
	return &scriptHeld{out: x.vm.out, data: bytes.Clone(in.Data)}, nil
}

type scriptHeld struct {
	out  *backend
	data []byte
	once sync.Once
}

func (h *scriptHeld) Release() error {
	h.once.Do(func() { h.out.deliver(h.data) })
	return nil
}
func (h *scriptHeld) Drop() { h.once.Do(func() {}) }

// backend is the world: it checks, as each console line arrives, that the
// secondary has already reproduced it (the ack-on-compare promise).
type backend struct {
	mu       sync.Mutex
	lines    [][]byte
	replayed func(k int) []byte // the secondary's k-th console output, or nil
	bad      []string
}

func (b *backend) deliver(data []byte) {
	if len(data) == 0 {
		return // the halt
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	k := len(b.lines)
	b.lines = append(b.lines, data)
	if b.replayed == nil {
		return
	}
	if got := b.replayed(k); !bytes.Equal(got, data) {
		b.bad = append(b.bad, fmt.Sprintf("line %d %q reached the world while the secondary had reproduced %q", k, data, got))
	}
}

func (b *backend) text() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(bytes.Join(b.lines, nil))
}

type scriptPair struct {
	pri, sec *Agent
	priOut   backend
	secOut   backend
	priErr   chan error
	secErr   chan error
	priTr    *tcpfallback.Transport

	mu       sync.Mutex
	replayed [][]byte
	// restoredHalted: the secondary's last checkpoint was taken after the
	// primary's guest exited (the primary ran ahead of the replica).
	restoredHalted bool
}

// clockFrom returns a live clock that starts at base and ticks by step:
// each host has its own, so a replica that read its own clock would print
// other lines.
func clockFrom(base, step uint64) func() uint64 {
	var mu sync.Mutex
	t := base
	return func() uint64 {
		mu.Lock()
		defer mu.Unlock()
		t += step
		return t
	}
}

func startScriptPair(t *testing.T, ctx context.Context, lines uint64, window int, bug bool) *scriptPair {
	return startScriptPairGlitch(t, ctx, lines, window, bug, 0)
}

// startScriptPairGlitch makes the secondary's first VM print another line
// at glitchLine (0: never).
func startScriptPairGlitch(t *testing.T, ctx context.Context, lines uint64, window int, bug bool, glitchLine uint64) *scriptPair {
	t.Helper()
	return startScriptPairGlitchOn(t, ctx, lines, window, bug, glitchLine, false)
}

// startScriptPairGlitchOn is startScriptPairGlitch; with onInput the
// secondary's first VM diverges on the clock read before glitchLine
// instead of on the line.
func startScriptPairGlitchOn(t *testing.T, ctx context.Context, lines uint64, window int, bug bool, glitchLine uint64, onInput bool) *scriptPair {
	t.Helper()
	return startScriptPairWith(t, ctx, lines, scriptOpts{window: window, bug: bug, glitchLine: glitchLine, glitchInput: onInput})
}

// scriptOpts are the ways a script pair can differ from the plain one.
type scriptOpts struct {
	window      int
	bug         bool   // the primary releases outputs when it holds them
	glitchLine  uint64 // the secondary's first VM diverges there (0: never)
	glitchInput bool   // on the clock read before the line, not the line
	// secClock is the secondary host's clock; nil: one far ahead of the
	// primary's.
	secClock func() uint64
}

func startScriptPairWith(t *testing.T, ctx context.Context, lines uint64, o scriptOpts) *scriptPair {
	t.Helper()
	window, bug, glitchLine, onInput := o.window, o.bug, o.glitchLine, o.glitchInput
	if o.secClock == nil {
		o.secClock = clockFrom(5_000_000, 3)
	}
	arb, err := arbiter.NewFile(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	p := &scriptPair{priErr: make(chan error, 1), secErr: make(chan error, 1)}
	p.priOut.replayed = func(k int) []byte {
		p.mu.Lock()
		defer p.mu.Unlock()
		if k < len(p.replayed) {
			return p.replayed[k]
		}
		return nil
	}
	// NewVM reaches the agent through ap: the agent does not exist yet
	// when its Config is made.
	cfg := func(role wire.Role, out *backend, clock func() uint64, ap **Agent) Config {
		c := Config{
			Node:         lockstep.Config{VMID: testVMID, Role: role, Mode: lockstep.AckOnCompare, HeartbeatTicks: 5, RetransmitTicks: 10, PeerTimeoutTicks: 100, LogWindowEntries: window},
			Arbiter:      arb,
			TickInterval: 5 * time.Millisecond,
		}
		c.NewVM = func(vmm.ExitHook) (VM, error) { return newScriptVM((*ap).onExit, lines, clock, out), nil }
		return c
	}
	secCfg := cfg(wire.RoleSecondary, &p.secOut, o.secClock, &p.sec)
	secVMs := 0
	newSecVM := secCfg.NewVM
	secCfg.NewVM = func(h vmm.ExitHook) (VM, error) {
		v, err := newSecVM(h)
		if err != nil {
			return v, err
		}
		sv := v.(*scriptVM)
		sv.onRestore = func(s *vmm.Snapshot) {
			p.mu.Lock()
			p.restoredHalted = s.Halted
			p.mu.Unlock()
		}
		if secVMs++; secVMs == 1 {
			sv.glitchLine, sv.glitchInput = glitchLine, onInput
		}
		return v, err
	}
	secCfg.OnReplayed = func(_ uint64, _ vmm.Device, data []byte) {
		if len(data) == 0 {
			return
		}
		p.mu.Lock()
		p.replayed = append(p.replayed, bytes.Clone(data))
		p.mu.Unlock()
	}
	if p.sec, err = New(secCfg); err != nil {
		t.Fatal(err)
	}
	priCfg := cfg(wire.RolePrimary, &p.priOut, clockFrom(1000, 7), &p.pri)
	priCfg.WaitForSecondary = true
	priCfg.Boot = func(VM) error { return nil }
	if p.pri, err = New(priCfg); err != nil {
		t.Fatal(err)
	}
	p.pri.bugReleaseOnHold = bug
	secTr, err := tcpfallback.Listen("127.0.0.1:0", tcpfallback.Config{VMID: testVMID, PSK: testPSK, OnFrame: p.sec.HandleFrame})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { secTr.Close() })
	p.priTr, err = tcpfallback.Dial(ctx, secTr.Addr(), tcpfallback.Config{VMID: testVMID, PSK: testPSK, OnFrame: p.pri.HandleFrame})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.priTr.Close() })
	go func() { p.secErr <- p.sec.Run(ctx, secTr) }()
	go func() { p.priErr <- p.pri.Run(ctx, p.priTr) }()
	return p
}

func (p *scriptPair) finish(t *testing.T) {
	t.Helper()
	if err := waitErr(t, "primary", p.priErr); err != nil {
		t.Fatalf("primary: %v", err)
	}
	p.sec.Stop()
	if err := waitErr(t, "secondary", p.secErr); err != nil {
		t.Fatalf("secondary: %v", err)
	}
}

func TestScriptPairReleasesOnlyWhatTheSecondaryReproduced(t *testing.T) {
	for _, window := range []int{0, 2} {
		t.Run(fmt.Sprintf("window=%d", window), func(t *testing.T) { scriptPairRun(t, window) })
	}
}

func scriptPairRun(t *testing.T, window int) {
	const lines = 300
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := startScriptPair(t, ctx, lines, window, false)
	p.finish(t)
	got := p.priOut.text()
	if want := primaryLines(lines); got != want {
		t.Fatalf("the world saw\n%q\nwant the primary's lines\n%q", head(got), head(want))
	}
	p.mu.Lock()
	replayed := string(bytes.Join(p.replayed, nil))
	p.mu.Unlock()
	if replayed != got {
		t.Fatalf("the secondary reproduced\n%q\nthe world saw\n%q", head(replayed), head(got))
	}
	if len(p.priOut.bad) > 0 {
		t.Fatalf("%d lines broke ack-on-compare; first: %s", len(p.priOut.bad), p.priOut.bad[0])
	}
	if s := p.secOut.text(); s != "" {
		t.Fatalf("the secondary's backend saw %q while its primary lived", head(s))
	}
	t.Logf("window %d: primary %+v", window, p.pri.Stats())
	if window != 0 && p.pri.Stats().Stalls == 0 {
		t.Fatalf("a log window of %d items never stalled the primary", window)
	}
	if st := p.pri.Stats(); st.Checkpoints != 1 || p.sec.Stats().Restores != 1 {
		t.Fatalf("want one checkpoint taken and restored; primary %+v secondary %+v", st, p.sec.Stats())
	}
}

// The planted bug: a primary that lets an output out when the guest makes
// it, not when Ready says. The backend's check must catch it.
func TestScriptPairCatchesReleaseOnHold(t *testing.T) {
	const lines = 100
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := startScriptPair(t, ctx, lines, 0, true)
	p.finish(t)
	if len(p.priOut.bad) == 0 {
		t.Fatal("a primary that releases outputs as soon as it holds them passed the ack-on-compare check")
	}
	t.Logf("caught: %d violations, first: %s", len(p.priOut.bad), p.priOut.bad[0])
}

// A secondary whose VM prints what the primary's did not diverges; the
// agent must carry the resync through: the primary pauses and ships a
// checkpoint, the secondary restores it into a fresh VM and replay goes
// on, and the world sees only the primary's lines, each after the
// secondary reproduced it.
func TestScriptPairResyncAfterDivergence(t *testing.T) {
	const lines, glitch = 200, 50
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := startScriptPairGlitch(t, ctx, lines, 0, false, glitch)
	p.finish(t)
	got := p.priOut.text()
	if want := primaryLines(lines); got != want {
		t.Fatalf("the world saw\n%q\nwant the primary's lines\n%q", got, want)
	}
	ps, ss := p.pri.Stats(), p.sec.Stats()
	if ss.Divergences == 0 || ss.Restores < 2 || ps.Checkpoints < 2 {
		t.Fatalf("want a divergence, then a second checkpoint taken and restored; primary %+v secondary %+v", ps, ss)
	}
	// The glitched line never reaches the world (the equality above). The
	// replica may have made it before the primary's record arrived to
	// compare it with (OnReplayed sees outputs as the VM makes them). The
	// order check below then proves nothing else of that VM's got through.
	p.mu.Lock()
	replayed := string(bytes.Join(p.replayed, nil))
	restoredHalted := p.restoredHalted
	p.mu.Unlock()
	if strings.Count(replayed, "glitch") > 1 {
		t.Fatalf("the replica made its glitched line more than once: %q", replayed)
	}
	replayed = strings.Replace(replayed, fmt.Sprintf("line %d glitch\n", glitch), "", 1)
	// The backend's positional check does not apply across a resync
	// (the restored VM starts past lines the old one never made), so
	// check order instead: what was replayed is, in order, what the world
	// saw, and the replay reached its end.
	world, rep := strings.SplitAfter(got, "\n"), strings.SplitAfter(replayed, "\n")
	i := 0
	for _, l := range rep {
		for i < len(world) && world[i] != l {
			i++
		}
		if i == len(world) {
			t.Fatalf("the secondary replayed %q, which the world never saw in that order", l)
		}
	}
	// Unless the primary's guest had already exited when it took the
	// resync checkpoint (it runs ahead, holding outputs): then the
	// checkpoint itself vouches for the lines after the divergence, and
	// the restored replica has nothing left to replay.
	if !restoredHalted && !strings.HasSuffix(got, lastLine(replayed)) {
		t.Fatalf("replay ended at %q, the world at %q", lastLine(replayed), lastLine(got))
	}
	t.Logf("primary %+v, secondary %+v, resync checkpoint of a halted guest: %v", ps, ss, restoredHalted)
}

// A replica that asks for an input with other arguments than the primary's
// request (the same exit and device, another arg or len) has diverged as
// surely as one that prints another line; it must be resynced the same
// way, not exit with "replay diverged".
func TestScriptPairResyncAfterInputDivergence(t *testing.T) {
	const lines, glitch = 200, 50
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := startScriptPairGlitchOn(t, ctx, lines, 0, false, glitch, true)
	p.finish(t)
	got := p.priOut.text()
	if want := primaryLines(lines); got != want {
		t.Fatalf("the world saw\n%q\nwant the primary's lines\n%q", head(got), head(want))
	}
	ps, ss := p.pri.Stats(), p.sec.Stats()
	if ss.Divergences == 0 || ss.Restores < 2 || ps.Checkpoints < 2 {
		t.Fatalf("want a divergence on the input, then a second checkpoint taken and restored; primary %+v secondary %+v", ps, ss)
	}
	// As after an output divergence, the positional check does not apply
	// across the resync: check that what was replayed is, in order, what
	// the world saw (the replica never made a line of its own here).
	p.mu.Lock()
	replayed := string(bytes.Join(p.replayed, nil))
	p.mu.Unlock()
	world := strings.SplitAfter(got, "\n")
	i := 0
	for _, l := range strings.SplitAfter(replayed, "\n") {
		for i < len(world) && world[i] != l {
			i++
		}
		if i == len(world) {
			t.Fatalf("the secondary replayed %q, which the world never saw in that order", l)
		}
	}
	t.Logf("primary %+v, secondary %+v", ps, ss)
}

// primaryLines is what the primary's program prints: its clock starts at
// 1000 and steps by 7 per read (the secondary's would print 5000003...).
func primaryLines(n int) string {
	var b strings.Builder
	for k := range n {
		fmt.Fprintf(&b, "line %d clock %d\n", k, 1000+7*(k+1))
	}
	return b.String()
}

func lastLine(s string) string {
	l := strings.SplitAfter(strings.TrimSuffix(s, "\n"), "\n")
	return l[len(l)-1] + "\n"
}

// failOverWhen waits (30 s at most) until ready says the pair got where
// the test wants it, then stops the primary and waits for the secondary
// to take over and finish; ready's message says what was missing.
func (p *scriptPair) failOverWhen(t *testing.T, ready func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ok, missing := ready()
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(missing)
		}
		select {
		case err := <-p.priErr:
			t.Fatalf("the primary finished before it was stopped (%v): give the script more lines", err)
		case <-time.After(2 * time.Millisecond):
		}
	}
	p.pri.Stop()
	p.priTr.Close()
	if err := waitErr(t, "primary", p.priErr); err != nil {
		t.Fatalf("stopped primary: %v", err)
	}
	if err := waitErr(t, "secondary", p.secErr); err != nil {
		t.Fatalf("secondary taking over: %v", err)
	}
}
