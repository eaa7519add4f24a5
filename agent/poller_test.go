package agent

import (
	"testing"

	"github.com/ftvm/ftvm/vmm"
)

// polledTransport is a Transport that is also a Poller, counting polls.
type polledTransport struct {
	loggedTransport
	polls int
}

func (p *polledTransport) Poll() int { p.polls++; return 0 }

// unknownExit is an exit whose op does not fit the log: onExit refuses
// it after its first step.
type unknownExit struct{}

func (unknownExit) info() exitInfo {
	return exitInfo{Device: vmm.DeviceConsole, Op: 1 << 20, Dir: vmm.DirInput}
}
func (unknownExit) live() (vmm.Result, error) { return vmm.Result{}, nil }
func (unknownExit) hold() (heldOutput, error) { return nil, nil }

// The vCPU thread of a host serving live polls a Poller transport at the
// start of every exit, once Run has set the transport, and not before; a
// replaying secondary's does not.
func TestExitPollsAPollerTransport(t *testing.T) {
	log := &opLog{}
	a := newUnitAgent(t, log)
	tr := &polledTransport{loggedTransport: loggedTransport{log: log}}
	a.tr = tr
	a.onExit(unknownExit{})
	if tr.polls != 0 {
		t.Fatalf("polled %d times before Run set the transport", tr.polls)
	}
	a.started.Store(true)
	a.pollAtExits.Store(false) // a replaying secondary
	a.onExit(unknownExit{})
	if tr.polls != 0 {
		t.Fatalf("a replaying secondary polled %d times", tr.polls)
	}
	a.pollAtExits.Store(true)
	for i := 1; i <= 3; i++ {
		if _, err := a.onExit(unknownExit{}); err == nil {
			t.Fatal("an exit with an op the log cannot hold was served")
		}
		if tr.polls != i {
			t.Fatalf("after %d exits the transport was polled %d times", i, tr.polls)
		}
	}
}
