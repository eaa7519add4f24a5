package agent

import (
	"testing"

	"github.com/ftvm/ftvm/lockstep/wire"
	"github.com/ftvm/ftvm/vmm"
)

// oversizedExit is an exit whose bytes do not fit the log, as if a device
// accepted more than internal/limits says.
type oversizedExit struct {
	in  exitInfo
	log *opLog
}

func (x oversizedExit) info() exitInfo { return x.in }
func (x oversizedExit) live() (vmm.Result, error) {
	return vmm.Result{Data: make([]byte, wire.MaxEntryDataBytes)}, nil
}
func (x oversizedExit) hold() (heldOutput, error) { return &loggedHeld{log: x.log, id: 1}, nil }

// A request the log cannot carry fails in the guest with an I/O error; it
// must not fail the exit (which stops the VM and the daemon), and a held
// output is dropped, never released.
func TestRequestTooLargeForTheLogFailsInTheGuest(t *testing.T) {
	log := &opLog{}
	a := newUnitAgent(t, log)
	for _, in := range []exitInfo{
		{Index: 0, Device: vmm.DeviceEntropy, Op: vmm.OpEntropyRead, Dir: vmm.DirInput, Len: wire.MaxEntryDataBytes},
		{Index: 1, Device: vmm.DeviceConsole, Op: vmm.OpConsoleWrite, Dir: vmm.DirOutput, Data: make([]byte, wire.MaxOutputDataBytes), Len: wire.MaxOutputDataBytes},
	} {
		res, err := a.onExit(oversizedExit{in: in, log: log})
		if err != nil {
			t.Fatalf("%s exit: %v; want an I/O error status for the guest, not a failed exit", in.Device, err)
		}
		if res.Status != vmm.StatusIO {
			t.Fatalf("%s exit: status %d, want StatusIO (%d)", in.Device, res.Status, vmm.StatusIO)
		}
	}
	if got := len(log.ops); got != 1 || log.ops[0] != "drop 1" {
		t.Fatalf("held output: %q, want it dropped", log.ops)
	}
	if n := a.Status().Held; n != 0 {
		t.Fatalf("the node holds %d outputs after refusing them", n)
	}
}

// The largest request of every device fits the log and survives the wire,
// without KVM: an input's bytes with the input header, an output's with
// the output header.
func TestLargestRequestOfEveryDeviceFitsTheWire(t *testing.T) {
	a := newUnitAgent(t, &opLog{})
	cases := []struct {
		dev vmm.Device
		op  uint32
		dir vmm.Direction
		max int
	}{
		{vmm.DeviceConsole, vmm.OpConsoleWrite, vmm.DirOutput, vmm.ConsoleMaxBytes},
		{vmm.DeviceEntropy, vmm.OpEntropyRead, vmm.DirInput, vmm.EntropyMaxBytes},
		{vmm.DeviceNIC, vmm.OpNICTX, vmm.DirOutput, vmm.NICFrameMaxBytes},
		{vmm.DeviceNIC, vmm.OpNICRX, vmm.DirInput, vmm.NICFrameMaxBytes},
		{vmm.DeviceBlock, vmm.OpBlockWrite, vmm.DirOutput, vmm.BlockMaxBytes},
		{vmm.DeviceBlock, vmm.OpBlockRead, vmm.DirInput, vmm.BlockMaxBytes},
	}
	for i, c := range cases {
		kind, err := exitKind(c.dev, c.op)
		if err != nil {
			t.Fatal(err)
		}
		data := make([]byte, c.max)
		var msg wire.Msg
		a.mu.Lock()
		if c.dir == vmm.DirInput {
			b := encodeInput(0, uint32(c.max), vmm.Result{Data: data})
			_, err = a.node.RecordInput(uint64(i), kind, b)
			msg = &wire.Entry{Seq: 1, ExitIndex: uint64(i), Kind: kind, Data: b}
		} else {
			b := encodeOutput(0, data)
			_, err = a.node.HoldOutput(uint64(i), kind, b)
			msg = &wire.Output{Seq: 1, ExitIndex: uint64(i), Device: kind, Length: uint32(len(b)), HasData: true, Data: b}
		}
		a.mu.Unlock()
		if err != nil {
			t.Fatalf("%s op %d, %d bytes: the node refused it: %v", c.dev, c.op, c.max, err)
		}
		if _, _, err := wire.Parse(msg.Append(nil)); err != nil {
			t.Fatalf("%s op %d, %d bytes: the wire refused it: %v", c.dev, c.op, c.max, err)
		}
	}
}
