package lockstep_test

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/lockstep/internal/ddtest"
	"github.com/ftvm/ftvm/lockstep/sim"
	"github.com/ftvm/ftvm/lockstep/wire"
)

// TestInteraction runs the scenarios in testdata/: scripted failures on a
// simulated pair (no random faults), with the notable events and the
// checkers' verdict as golden output.
//
//	new [mode=compare|receipt] [seed=N] [precopy=N]
//	                                      a primary on A, a joining secondary on B
//	                                      (joining after N live copies of the VM)
//	run steps=N                           advance; print events and both hosts' state
//	crash host=A|B                        kill a host (it restarts as a secondary)
//	partition from=A|B|both               cut delivery from a host (or both ways)
//	heal                                  restore the network
//	drop type=ack|entry|... n=N           lose the next N messages of a type
//	diverge host=A|B                      perturb a guest (RDTSC-like)
//	check                                 the checkers' verdict and counters
func TestInteraction(t *testing.T) {
	files, err := filepath.Glob("testdata/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no scenarios in testdata/: %v", err)
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".txt"), func(t *testing.T) {
			var s *sim.Sim
			var events []string
			ddtest.RunFile(t, f, func(t *testing.T, c *ddtest.Cmd) string {
				if c.Name != "new" && s == nil {
					t.Fatalf("%s: %s before new", c.Pos, c.Name)
				}
				switch c.Name {
				case "new":
					mode := lockstep.AckOnCompare
					if c.Arg("mode", "compare") == "receipt" {
						mode = lockstep.AckOnReceipt
					}
					seed, _ := strconv.ParseUint(c.Arg("seed", "1"), 10, 64)
					o := sim.DefaultOptions(mode)
					o.Faults = false
					// Joins take one paused checkpoint unless precopy=N
					// asks for N live copies before it.
					o.PrecopyBySeed = false
					o.Node.PrecopyRounds, _ = strconv.Atoi(c.Arg("precopy", "0"))
					o.Trace = func(line string) {
						// Flow control comes and goes with the random
						// scheduling; the scenario is about the rest.
						if !strings.Contains(line, " stall") && !strings.Contains(line, " unstall") {
							events = append(events, line)
						}
					}
					s = sim.New(seed, o)
					return s.Describe()
				case "run":
					events = events[:0]
					n, err := strconv.Atoi(c.Arg("steps", "100"))
					if err != nil {
						t.Fatalf("%s: steps: %v", c.Pos, err)
					}
					s.RunSteps(n)
					return strings.Join(append(events, s.Describe()), "\n")
				case "crash":
					s.Crash(host(t, c))
				case "partition":
					switch c.Arg("from", "both") {
					case "both":
						s.Partition(0, true)
						s.Partition(1, true)
					default:
						s.Partition(host(t, c, "from"), true)
					}
				case "heal":
					s.Heal()
				case "drop":
					n, _ := strconv.Atoi(c.Arg("n", "1"))
					s.DropNext(msgType(t, c), n)
				case "diverge":
					s.Diverge(host(t, c))
				case "check":
					r := s.Result()
					out := fmt.Sprintf("outputs=%d repeats=%d failovers=%d resyncs=%d crashes=%d halts=%d", r.Outputs, r.Repeats, r.Failovers, r.Resyncs, r.Crashes, r.Halts)
					if !r.Failed() {
						return out + "\nok: every checker held"
					}
					for _, v := range r.Violations {
						out += "\n" + v.String()
					}
					return out
				default:
					t.Fatalf("%s: unknown command %q", c.Pos, c.Name)
				}
				return ""
			})
		})
	}
}

func host(t *testing.T, c *ddtest.Cmd, key ...string) int {
	k := "host"
	if len(key) > 0 {
		k = key[0]
	}
	switch c.Arg(k, "") {
	case "A":
		return 0
	case "B":
		return 1
	}
	t.Fatalf("%s: %s= must be A or B", c.Pos, k)
	return 0
}

func msgType(t *testing.T, c *ddtest.Cmd) wire.Type {
	name := c.Arg("type", "")
	for ty := wire.TypeHello; ty <= wire.TypeCheckpointAck; ty++ {
		if ty.String() == name {
			return ty
		}
	}
	t.Fatalf("%s: unknown message type %q", c.Pos, name)
	return 0
}
