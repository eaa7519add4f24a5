package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftvm/ftvm/internal/testutil"
	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/lockstep/arbiter"
	"github.com/ftvm/ftvm/lockstep/wire"
	"github.com/ftvm/ftvm/transport"
	"github.com/ftvm/ftvm/vmm"
)

func TestInputRoundTripAndMismatch(t *testing.T) {
	res := vmm.Result{Status: -5, Value: 1<<40 + 3, Data: []byte("frame bytes")}
	b := encodeInput(17, 64, res)
	got, err := decodeInput(b, 17, 64)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != res.Status || got.Value != res.Value || !bytes.Equal(got.Data, res.Data) {
		t.Fatalf("round trip: got %+v, want %+v", got, res)
	}
	if _, err := decodeInput(b, 18, 64); err == nil || !strings.Contains(err.Error(), "arg 18") {
		t.Fatalf("another sector: %v, want a divergence naming arg 18", err)
	}
	if _, err := decodeInput(b, 17, 65); err == nil {
		t.Fatal("another length passed")
	}
	if _, err := decodeInput(b[:inputHeaderBytes-1], 17, 64); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("short entry: %v", err)
	}
}

func TestExitKind(t *testing.T) {
	k, err := exitKind(vmm.DeviceBlock, vmm.OpBlockWrite)
	if err != nil || k>>8 != uint16(vmm.DeviceBlock) || k&0xff != uint16(vmm.OpBlockWrite) {
		t.Fatalf("kind %#x, %v", k, err)
	}
	if _, err := exitKind(vmm.DeviceNIC, maxOpForKind+1); err == nil {
		t.Fatal("an op that does not fit the kind was accepted")
	}
	// Outputs to different sectors must digest differently.
	if bytes.Equal(encodeOutput(1, []byte("x")), encodeOutput(2, []byte("x"))) {
		t.Fatal("the output's arg is not part of what the secondary compares")
	}
}

// opLog records what the executor did, in order, across the VM, the held
// outputs and the transport.
type opLog struct{ ops []string }

func (l *opLog) add(f string, a ...any) { l.ops = append(l.ops, fmt.Sprintf(f, a...)) }

type loggedVM struct {
	log   *opLog
	state vmm.State
}

func (v *loggedVM) Resume(uint64) error { v.log.add("resume"); v.state = vmm.Running; return nil }
func (v *loggedVM) Pause() error        { v.log.add("pause"); v.state = vmm.Paused; return nil }
func (v *loggedVM) Snapshot(vmm.SnapshotKind) (*vmm.Snapshot, error) {
	v.log.add("snapshot")
	return &vmm.Snapshot{Kind: vmm.Full, MemSize: 8 << 20, VCPUs: make([]vmm.VCPUState, 1)}, nil
}
func (v *loggedVM) Restore(*vmm.Snapshot) error { v.log.add("restore"); return nil }
func (v *loggedVM) SnapshotLive(vmm.SnapshotKind) (*vmm.Snapshot, error) {
	v.log.add("snapshot-live")
	return &vmm.Snapshot{Kind: vmm.Full, MemSize: 8 << 20, VCPUs: make([]vmm.VCPUState, 1)}, nil
}
func (v *loggedVM) Status() vmm.Status { return vmm.Status{State: v.state} }
func (v *loggedVM) Close() error       { v.log.add("close"); return nil }
func (v *loggedVM) Deliver(d vmm.Device, _ uint32, _ uint64, data []byte) error {
	v.log.add("deliver %s %q", d, data)
	return nil
}

type loggedHeld struct {
	log *opLog
	id  uint64
}

func (h *loggedHeld) Release() error { h.log.add("release %d", h.id); return nil }
func (h *loggedHeld) Drop()          { h.log.add("drop %d", h.id) }

type loggedTransport struct{ log *opLog }

func (t *loggedTransport) Send(typ transport.Type, _ []byte) error {
	t.log.add("send %s", typ)
	return nil
}

func newUnitAgent(t *testing.T, log *opLog) *Agent {
	t.Helper()
	a, err := New(Config{
		Node:    lockstep.Config{VMID: testVMID, Role: wire.RolePrimary, Mode: lockstep.AckOnCompare},
		NewVM:   func(vmm.ExitHook) (VM, error) { return &loggedVM{log: log}, nil },
		Boot:    func(VM) error { return nil },
		Arbiter: arbiter.NewMemory(),
	})
	if err != nil {
		t.Fatal(err)
	}
	a.vm, a.booted, a.running = &loggedVM{log: log, state: vmm.Running}, true, true
	a.tr = &loggedTransport{log: log}
	return a
}

// A recorded Ready: the executor must pause before it snapshots, release
// and drop only after the commands, and send last.
func TestPerformOrder(t *testing.T) {
	log := &opLog{}
	a := newUnitAgent(t, log)
	for _, id := range []uint64{5, 6, 7} {
		a.handles[id] = heldEntry{h: &loggedHeld{log: log, id: id}}
	}
	w := &work{
		cmds: []lockstep.Command{{Kind: lockstep.CmdPause}, {Kind: lockstep.CmdTakeCheckpoint, Checkpoint: lockstep.Checkpoint{ID: 1, Full: true}}, {Kind: lockstep.CmdResume}},
		rel:  []lockstep.Output{{ID: 5, Seq: 9}, {ID: 6, Seq: 10}},
		drop: []uint64{7},
		msgs: []encoded{{typ: transport.TypeLog}, {typ: transport.TypeCheckpoint}},
	}
	if err := a.perform(context.Background(), w); err != nil {
		t.Fatal(err)
	}
	want := "pause snapshot resume release 5 release 6 drop 7 send log send checkpoint"
	if got := strings.Join(log.ops, " "); got != want {
		t.Fatalf("executor did\n  %s\nwant\n  %s", got, want)
	}
	if len(a.handles) != 0 {
		t.Fatalf("%d handles left after release and drop", len(a.handles))
	}
}

// A stall and a checkpoint pause overlap: the VM may run again only when
// both are over.
func TestStallAndPauseOverlap(t *testing.T) {
	log := &opLog{}
	a := newUnitAgent(t, log)
	ctx := context.Background()
	for _, k := range []lockstep.CommandKind{lockstep.CmdStall, lockstep.CmdPause, lockstep.CmdUnstall, lockstep.CmdResume} {
		if err := a.command(ctx, lockstep.Command{Kind: k}); err != nil {
			t.Fatal(err)
		}
		log.add("|%s", k)
	}
	want := "pause |stall |pause |unstall resume |resume"
	if got := strings.Join(log.ops, " "); got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}

// An output no exit holds is one a checkpoint carried: it is performed
// from the node's bytes through VM.Deliver, and bytes that are no output
// of this agent's codec are refused.
func TestPerformDeliversCheckpointCarriedRelease(t *testing.T) {
	log := &opLog{}
	a := newUnitAgent(t, log)
	kind, _ := exitKind(vmm.DeviceConsole, vmm.OpConsoleWrite)
	err := a.perform(context.Background(), &work{rel: []lockstep.Output{{ID: 42, Seq: 3, Device: kind, Data: encodeOutput(0, []byte("hi\n")), Carried: true}}})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(log.ops, " "), `deliver console "hi\n"`; got != want {
		t.Fatalf("ops %q, want %q", got, want)
	}
	err = a.perform(context.Background(), &work{rel: []lockstep.Output{{ID: 43, Seq: 4, Device: kind, Data: []byte{1, 2}, Carried: true}}})
	if err == nil || !strings.Contains(err.Error(), "seq 4") {
		t.Fatalf("release of malformed carried bytes: %v", err)
	}
}

// A persisted block write goes to this host's disk through the VMM's
// hold when this VM made it, else from the carried bytes.
func TestPersistReleasesHoldOrDelivers(t *testing.T) {
	log := &opLog{}
	a := newUnitAgent(t, log)
	a.handles[7] = heldEntry{h: &loggedHeld{log: log, id: 7}}
	kind, _ := exitKind(vmm.DeviceBlock, vmm.OpBlockWrite)
	for _, o := range []lockstep.Output{{ID: 7, Seq: 10, Device: kind}, {ID: 8, Seq: 11, Device: kind, Data: encodeOutput(2, []byte("sector")), Carried: true}} {
		if err := a.command(context.Background(), lockstep.Command{Kind: lockstep.CmdPersist, Output: o}); err != nil {
			t.Fatal(err)
		}
	}
	a.disk.drain() // block writes go through the disk writer
	if got, want := strings.Join(log.ops, " "), `release 7 deliver block "sector"`; got != want {
		t.Fatalf("ops %q, want %q", got, want)
	}
	if !isDiskWrite(kind) || isDiskWrite(kind+1) {
		t.Fatal("isDiskWrite does not pick out block writes")
	}
}

func TestCheckpointOfRunningVMRefused(t *testing.T) {
	a := newUnitAgent(t, &opLog{})
	err := a.command(context.Background(), lockstep.Command{Kind: lockstep.CmdTakeCheckpoint, Checkpoint: lockstep.Checkpoint{ID: 1}})
	if err == nil || !strings.Contains(err.Error(), "without a pause") {
		t.Fatalf("checkpoint of a running VM: %v", err)
	}
}

func TestRestoreRefusesGarbage(t *testing.T) {
	a := newUnitAgent(t, &opLog{})
	err := a.command(context.Background(), lockstep.Command{Kind: lockstep.CmdRestoreCheckpoint, Checkpoint: lockstep.Checkpoint{ID: 3, Data: []byte("not a snapshot")}})
	if !errors.Is(err, vmm.ErrBadSnapshot) {
		t.Fatalf("restore of garbage: %v, want ErrBadSnapshot", err)
	}
}

func TestNewRefusesMissingParts(t *testing.T) {
	node := lockstep.Config{VMID: testVMID, Role: wire.RolePrimary, Mode: lockstep.AckOnReceipt}
	newVM := func(vmm.ExitHook) (VM, error) { return nil, errors.New("unused") }
	for name, c := range map[string]Config{
		"NewVM":   {Node: node, Arbiter: arbiter.NewMemory(), Boot: func(VM) error { return nil }},
		"Arbiter": {Node: node, NewVM: newVM, Boot: func(VM) error { return nil }},
		"Boot":    {Node: node, NewVM: newVM, Arbiter: arbiter.NewMemory()},
	} {
		if _, err := New(c); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("config without %s: %v", name, err)
		}
	}
}

// syncBuffer is a log that tests read while the agent writes.
type syncBuffer = testutil.Buffer

// flakyArbiter fails its first fails calls with err, then grants.
type flakyArbiter struct {
	mu    sync.Mutex
	fails int
	calls int
	err   error
}

func (f *flakyArbiter) Acquire(ctx context.Context, vmID string, epoch uint64) (bool, uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.calls <= f.fails {
		return false, 0, f.err
	}
	return true, 1, nil
}

func runLonePrimary(t *testing.T, arb Arbiter, logs *syncBuffer) (*Agent, *opLog, chan error) {
	t.Helper()
	log := &opLog{}
	a, err := New(Config{
		Node:         lockstep.Config{VMID: testVMID, Role: wire.RolePrimary, Mode: lockstep.AckOnReceipt},
		NewVM:        func(vmm.ExitHook) (VM, error) { return &loggedVM{log: log, state: vmm.Paused}, nil },
		Boot:         func(VM) error { return nil },
		Arbiter:      arb,
		TickInterval: time.Millisecond,
		Logger:       slog.New(slog.NewTextHandler(logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(context.Background(), &loggedTransport{log: &opLog{}}) }()
	return a, log, done
}

// An arbiter that cannot be written (its directory gone, read-only,
// forbidden) is no passing fault: the agent says so at ERROR, with what to
// do, and Run ends with ErrArbiterUnusable after a few tries instead of
// asking forever (issue 15).
func TestArbiterUnusableStopsRun(t *testing.T) {
	dir := t.TempDir() + "/arb"
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	arb, err := arbiter.NewFile(dir)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(dir) // a real file arbiter whose directory went away: ENOENT
	var logs syncBuffer
	a, _, done := runLonePrimary(t, arb, &logs)
	select {
	case err := <-done:
		if !errors.Is(err, ErrArbiterUnusable) || !strings.Contains(err.Error(), dir) {
			t.Fatalf("Run: %v; want ErrArbiterUnusable naming %s", err, dir)
		}
	case <-time.After(30 * time.Second):
		a.Stop()
		t.Fatalf("Run went on asking an arbiter whose directory is gone; log:\n%s", logs.String())
	}
	out := logs.String()
	if n := strings.Count(out, "level=ERROR"); n != arbiterPermanentTries-1 || !strings.Contains(out, "no such file or directory") {
		t.Fatalf("want %d errors logged naming the cause, then the one Run returns; log:\n%s", arbiterPermanentTries-1, out)
	}
}

// An error that may pass (a timeout) is logged and retried, shows in
// Status, and once the arbiter answers the VM runs.
func TestArbiterTransientErrorsRetried(t *testing.T) {
	arb := &flakyArbiter{fails: 2 * arbiterPermanentTries, err: context.DeadlineExceeded}
	var logs syncBuffer
	a, vmLog, done := runLonePrimary(t, arb, &logs)
	deadline := time.Now().Add(30 * time.Second)
	for a.Status().Epoch != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("never granted; status %+v; log:\n%s", a.Status(), logs.String())
		}
		time.Sleep(time.Millisecond)
	}
	if st := a.Status(); st.ArbiterFailures != 0 || st.ArbiterErr != "" {
		t.Fatalf("status after the grant %+v: the error must clear", st)
	}
	a.Stop()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if n := strings.Count(logs.String(), "level=ERROR"); n != 2*arbiterPermanentTries {
		t.Fatalf("%d errors logged, want %d; log:\n%s", n, 2*arbiterPermanentTries, logs.String())
	}
	if !strings.Contains(strings.Join(vmLog.ops, " "), "resume") {
		t.Fatalf("the VM never ran once the arbiter answered: %v", vmLog.ops)
	}
}

// fullTransport's socket is full until room is set: TrySend says so, and
// Send must not be reached from a reader.
type fullTransport struct {
	t    *testing.T
	room bool
	sent []string
	// readerWaiting is set while a reader performs: a Send then would
	// be a reader waiting on a full socket.
	readerWaiting bool
}

func (f *fullTransport) Send(_ transport.Type, p []byte) error {
	if f.readerWaiting && !f.room {
		f.t.Errorf("a reader called Send for %q on a full socket: it would wait there", p)
	}
	f.sent = append(f.sent, string(p))
	return nil
}

func (f *fullTransport) TrySend(_ transport.Type, p []byte) error {
	if !f.room {
		return transport.ErrWouldBlock
	}
	f.sent = append(f.sent, string(p))
	return nil
}

// Issue 16, item 8: a transport reader performing a Ready never waits for
// room in a full socket: what does not fit goes to the loop, and every
// message still leaves in the node's order (a later one never overtakes
// one deferred before it).
func TestReaderDoesNotWaitForAFullSocket(t *testing.T) {
	a := newUnitAgent(t, &opLog{})
	tr := &fullTransport{t: t}
	a.tr = tr
	msgs := func(names ...string) []encoded {
		var out []encoded
		for _, n := range names {
			out = append(out, encoded{typ: transport.TypeAck, b: []byte(n)})
		}
		return out
	}
	reader := func(names ...string) {
		a.readyMu.Lock()
		defer a.readyMu.Unlock()
		tr.readerWaiting = true
		defer func() { tr.readerWaiting = false }()
		if err := a.perform(context.Background(), &work{msgs: msgs(names...), fromReader: true}); err != nil {
			t.Fatal(err)
		}
	}
	reader("ack1", "ack2")
	if len(tr.sent) != 0 || len(a.deferred) != 2 {
		t.Fatalf("full socket: sent %q, deferred %d; want nothing sent and both deferred", tr.sent, len(a.deferred))
	}
	select {
	case <-a.wake:
	default:
		t.Fatal("the loop was not poked to send what the reader deferred")
	}
	tr.room = true
	reader("ack3") // room now, but ack1 and ack2 go first
	if len(tr.sent) != 0 {
		t.Fatalf("ack3 overtook the deferred acks: sent %q", tr.sent)
	}
	a.readyMu.Lock()
	a.sendDeferred() // the loop
	a.readyMu.Unlock()
	reader("ack4")
	if got := strings.Join(tr.sent, " "); got != "ack1 ack2 ack3 ack4" {
		t.Fatalf("sent %q, want ack1 ack2 ack3 ack4 in order", got)
	}
}
