package agent

import (
	"context"
	"strings"
	"testing"

	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/vmm"
)

// Issue 17: a release (or a persist) of an output that no exit of this VM
// holds and that no checkpoint carried is an error, never a silent
// delivery from the node's bytes as if a checkpoint had carried it.
func TestReleaseOfAnOutputNobodyHoldsFails(t *testing.T) {
	log := &opLog{}
	a := newUnitAgent(t, log)
	console, _ := exitKind(vmm.DeviceConsole, vmm.OpConsoleWrite)
	o := lockstep.Output{ID: 9, Seq: 5, Device: console, Data: encodeOutput(0, []byte("lost\n"))}
	err := a.perform(context.Background(), &work{rel: []lockstep.Output{o}})
	if err == nil || !strings.Contains(err.Error(), "no exit of this VM holds it") || !strings.Contains(err.Error(), "seq 5") {
		t.Fatalf("release of an output nobody holds: %v, want an error naming seq 5", err)
	}
	block, _ := exitKind(vmm.DeviceBlock, vmm.OpBlockWrite)
	o = lockstep.Output{ID: 10, Seq: 6, Device: block, Data: encodeOutput(2, []byte("sector"))}
	err = a.command(context.Background(), lockstep.Command{Kind: lockstep.CmdPersist, Output: o})
	if err == nil || !strings.Contains(err.Error(), "no exit of this VM holds it") || !strings.Contains(err.Error(), "seq 6") {
		t.Fatalf("persist of an output nobody holds: %v, want an error naming seq 6", err)
	}
	a.disk.drain()
	if len(log.ops) != 0 {
		t.Fatalf("outputs nobody holds were performed anyway: %q", log.ops)
	}
	if got := a.Stats().Released; got != 0 {
		t.Fatalf("%d outputs counted as released", got)
	}
}

// Issue 17: an error an inline perform meets (on the vCPU thread or a
// transport reader, see flushInline) stops the run as the same error on
// the loop does: the loop returns it, and nothing is performed inline
// after it.
func TestInlinePerformErrorStopsTheLoop(t *testing.T) {
	ctx := context.Background()
	log := &opLog{}
	a := newUnitAgent(t, log)
	a.started.Store(true)
	// A lone primary that the arbiter granted its epoch releases an
	// output as soon as it is held.
	if err := a.process(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.arbiterAnswered(<-a.arbRes); err != nil {
		t.Fatal(err)
	}
	if err := a.process(ctx); err != nil {
		t.Fatal(err)
	}
	console, _ := exitKind(vmm.DeviceConsole, vmm.OpConsoleWrite)
	hold := func(exit uint64) {
		a.mu.Lock()
		defer a.mu.Unlock()
		// Held by the node, but the agent's table has no hold for it.
		if _, err := a.node.HoldOutput(exit, console, encodeOutput(0, []byte("x\n"))); err != nil {
			t.Fatal(err)
		}
		a.flushInline() // a transport reader's, after a Step
	}
	hold(1)
	hold(2) // not performed: the first error ends inline performing
	err := a.process(ctx)
	if err == nil || !strings.Contains(err.Error(), "no exit of this VM holds it") || !strings.Contains(err.Error(), "transport reader") {
		t.Fatalf("the loop after a failed inline perform: %v, want that perform's error", err)
	}
	a.mu.Lock()
	rd := a.node.Ready()
	a.mu.Unlock()
	if len(rd.Release) != 1 {
		t.Fatalf("the second output's release: %d in the node's Ready, want it left there (1)", len(rd.Release))
	}
}
