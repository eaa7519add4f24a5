package agent

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/lockstep/arbiter"
	"github.com/ftvm/ftvm/lockstep/wire"
	"github.com/ftvm/ftvm/transport"
	"github.com/ftvm/ftvm/vmm"
)

// TestStepErrorsLogged: a frame the node refuses (here a hello for another
// VM) is logged with what to do, not only counted; a burst of them costs
// one line.
func TestStepErrorsLogged(t *testing.T) {
	var buf bytes.Buffer
	a, err := New(Config{
		Node:    lockstep.Config{VMID: testVMID, Role: wire.RoleSecondary, Mode: lockstep.AckOnCompare},
		NewVM:   func(vmm.ExitHook) (VM, error) { return &loggedVM{log: &opLog{}}, nil },
		Boot:    func(VM) error { return nil },
		Arbiter: arbiter.NewMemory(),
		Logger:  slog.New(slog.NewTextHandler(&buf, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	a.tr = &loggedTransport{log: &opLog{}}
	hello := &wire.Hello{ProtocolVersion: wire.ProtocolVersion, VMID: "another-vm", Role: wire.RolePrimary}
	for range 5 {
		a.HandleFrame(transport.Frame{Payload: hello.Append(nil)})
	}
	if n := a.Stats().StepErrors; n != 5 {
		t.Fatalf("StepErrors %d, want 5", n)
	}
	out := buf.String()
	if strings.Count(out, "frame from the peer refused") != 1 || !strings.Contains(out, "check the peer address") {
		t.Fatalf("want one log line naming the refused hello and what to do, got:\n%s", out)
	}
}

// TestOversizedCheckpointKeepsPrimary: a checkpoint larger than
// MaxCheckpointBytes gives up the join; the agent logs it and goes on,
// where it used to fail the command and so stop the VM.
func TestOversizedCheckpointKeepsPrimary(t *testing.T) {
	log := &opLog{}
	a, err := New(Config{
		Node:    lockstep.Config{VMID: testVMID, Role: wire.RolePrimary, Mode: lockstep.AckOnCompare, CheckpointChunkBytes: 16, MaxCheckpointBytes: 32},
		NewVM:   func(vmm.ExitHook) (VM, error) { return &loggedVM{log: log}, nil },
		Boot:    func(VM) error { return nil },
		Arbiter: arbiter.NewMemory(),
	})
	if err != nil {
		t.Fatal(err)
	}
	a.vm, a.booted, a.running = &loggedVM{log: log, state: vmm.Running}, true, true
	a.tr = &loggedTransport{log: log}
	a.node.ArbiterResult(1, true, 1, nil)
	if err := a.node.Step(&wire.Hello{ProtocolVersion: wire.ProtocolVersion, VMID: testVMID, Role: wire.RoleSecondary}); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for range 3 {
		w := a.takeReady()
		if err := a.perform(ctx, &w); err != nil {
			t.Fatalf("a join whose checkpoint is too large stopped the primary: %v", err)
		}
	}
	if st := a.node.Status(); st.Role != lockstep.RolePrimary || st.Syncing {
		t.Fatalf("after the failed join the node is %+v, want a primary going on", st)
	}
}
