package agent

import (
	"time"

	"github.com/ftvm/ftvm/vmm"
)

// Probe points: functions that do nothing, called where an output is
// held, where an acknowledgement arrives and where an output is handed to
// its device backend, so that the eBPF probes of bench/probe (ftvm probe)
// can time an output's path from outside the daemon. They attach uprobes
// at the entry of these functions only (Go moves goroutine stacks, so a
// uretprobe would corrupt them) and read the arguments from the registers
// of Go's internal ABI (the first in RAX, the second in RBX). They are not
// inlined, so each keeps a symbol of its own in the binary, which is how
// the probe finds them (debug/elf). Their names and arguments are
// bench/probe's contract with this package: change both together (its
// tests load the probes against a daemon built from this tree). A call
// costs a few nanoseconds without a probe attached.

// probeOutputHeld marks an output the primary now holds (on the vCPU
// thread, just after the daemon's own hold clock started): id is the
// node's output ID.
//
//go:noinline
func probeOutputHeld(id uint64) {}

// probeAckReceived marks an acknowledgement from the secondary, before
// the node steps it (on a transport reader, under the agent's lock), when
// an output is held (only then can it release one, and a probe's trap on
// every acknowledgement cost the kvstore a tenth of its throughput):
// received is the log position it acknowledges as received.
//
//go:noinline
func probeAckReceived(received uint64) {}

// probeOutputReleased marks a held output the node released, as it is
// handed to its device backend (just after the daemon's own hold clock
// stopped): toNIC is 1 for a frame the NIC sends into the TAP, else 0.
//
//go:noinline
func probeOutputReleased(id, toNIC uint64) {}

// plantedHoldDelay is a sleep on the vCPU thread between an output's
// exit and its hold: zero in the daemon, set only under the
// ftvm_planted_delay build tag (probe_planted.go), for bench/probe's test
// that a delay planted on one stage shows in that stage's histogram and
// nowhere else. (On the vCPU thread, without the agent's lock, it slows
// only its own guest; a delay on a lane reader would queue every
// acknowledgement behind it.)
var plantedHoldDelay time.Duration

// isNIC tells a frame for the NIC's TAP from other outputs (console text,
// block writes) by its kind.
func isNIC(kind uint16) bool { d, _ := splitKind(kind); return d == vmm.DeviceNIC }

func b2u(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}
