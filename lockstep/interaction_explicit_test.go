package lockstep_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/lockstep/arbiter"
	"github.com/ftvm/ftvm/lockstep/internal/ddtest"
	"github.com/ftvm/ftvm/lockstep/wire"
)

// TestInteractionExplicit runs the scenarios in testdata/explicit/: two
// nodes driven one message, one tick and one VM exit at a time, as
// etcd-io/raft's interaction tests are. Nothing in them is random, so a
// scenario's golden output changes only when the protocol does, never
// when the simulator draws its numbers in another order (the seeded
// scenarios in testdata/*.txt cover that ground).
//
//	new [mode=compare|receipt] [base=on]  a primary on A (granted epoch 1), a joining secondary on B;
//	                                      base=on: a secondary's resync requests carry a base
//	                                      (Config.ResyncBase: "exit=N", its guest's exit count)
//	tick host=A|B [n=N]                   N Ticks of logical time
//	exit host=A|B [n=N]                   the host's VM runs N exits (even: an input, odd: an output);
//	                                      a secondary stops at the first it cannot replay yet
//	deliver from=A|B [type=T] [n=N]       deliver what is in flight from the host (of type T, the first N)
//	drop from=A|B [type=T] [n=N]          lose what is in flight from the host (of type T, the first N)
//	stabilize                             deliver both ways until nothing is in flight (no ticks, no exits)
//	crash host=A|B                        kill the host; what is in flight to and from it is lost
//	                                      (as when a host halts)
//	restart host=A|B                      bring a crashed host back as a joining secondary
//	partition from=A|B|both               lose what crosses from the host (or both ways) from now on
//	heal                                  restore the network
//	diverge host=A|B                      perturb the host's guest (as an RDTSC the log did not catch)
//	fail-restore host=A|B [n=N]           the host's next N restores fail (CheckpointRestoreFailed),
//	                                      leaving its guest as it was
//	status                                both hosts' state and what is in flight
//
// Every command prints what the nodes did: commands to the VMM and
// arbiter (cmd), outputs released to the world (release), messages sent
// (send) and received (recv).
func TestInteractionExplicit(t *testing.T) {
	files, err := filepath.Glob("testdata/explicit/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no scenarios in testdata/explicit/: %v", err)
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".txt"), func(t *testing.T) {
			var e *env
			ddtest.RunFile(t, f, func(t *testing.T, c *ddtest.Cmd) string {
				if c.Name != "new" && e == nil {
					t.Fatalf("%s: %s before new", c.Pos, c.Name)
				}
				if c.Name == "new" {
					mode := lockstep.AckOnCompare
					if c.Arg("mode", "compare") == "receipt" {
						mode = lockstep.AckOnReceipt
					}
					e = newEnv(t, mode, c.Arg("base", "off") == "on")
				}
				e.out.Reset()
				e.handle(t, c)
				return e.out.String()
			})
		})
	}
}

// env is two hosts, the links between them (a FIFO queue of frames each
// way) and an arbiter.
type env struct {
	mode  lockstep.Mode
	base  bool // secondaries send a resync base
	hosts [2]*ehost
	links [2][][]byte // links[i]: frames in flight from host i, oldest first
	cut   [2]bool     // cut[i]: frames from host i are lost
	arb   *arbiter.Memory
	out   strings.Builder
}

type ehost struct {
	name string
	node *lockstep.Node
	g    eguest
	live bool // the guest takes live inputs (primary)
	// paused, stalled: the vCPU is stopped (CmdPause, CmdStall).
	paused, stalled bool
	failRestores    int // the next restores that fail
}

// eguest is a deterministic guest: exit k is an input when k is even and
// an output (of its state) when k is odd.
type eguest struct {
	exit, state uint64
}

func (g *eguest) input(data []byte) {
	g.state = g.state*31 + binary.LittleEndian.Uint64(data)
	g.exit++
}

func (g *eguest) output() []byte { return binary.LittleEndian.AppendUint64(nil, g.state) }

func (g *eguest) snapshot() []byte {
	return binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(nil, g.exit), g.state)
}

const evmID = "explicit-vm"

func newEnv(t *testing.T, mode lockstep.Mode, base bool) *env {
	e := &env{mode: mode, base: base, arb: arbiter.NewMemory()}
	e.hosts[0] = &ehost{name: "A"}
	e.hosts[1] = &ehost{name: "B"}
	e.start(t, 0, wire.RolePrimary)
	e.start(t, 1, wire.RoleSecondary)
	return e
}

func (e *env) printf(format string, args ...any) { fmt.Fprintf(&e.out, format+"\n", args...) }

func (e *env) start(t *testing.T, i int, role lockstep.Role) {
	h := e.hosts[i]
	cfg := lockstep.Config{VMID: evmID, Role: role, Mode: e.mode, PeerTimeoutTicks: 6, HeartbeatTicks: 2, RetransmitTicks: 3}
	if e.base {
		cfg.ResyncBase = func() []byte { return fmt.Appendf(nil, "exit=%d", h.g.exit) }
	}
	n, err := lockstep.NewNode(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.node, h.g, h.live, h.paused, h.stalled = n, eguest{}, role == lockstep.RolePrimary, false, false
	e.printf("%s up as %s", h.name, role)
	e.process(t, i)
}

func (e *env) handle(t *testing.T, c *ddtest.Cmd) {
	n, err := strconv.Atoi(c.Arg("n", "-1"))
	if err != nil {
		t.Fatalf("%s: n: %v", c.Pos, err)
	}
	switch c.Name {
	case "new":
		e.status()
	case "tick":
		i := ehostArg(t, c, "host")
		for range max(n, 1) {
			if h := e.hosts[i]; h.node != nil {
				h.node.Tick()
				e.process(t, i)
			}
		}
	case "exit":
		e.exits(t, ehostArg(t, c, "host"), max(n, 1))
	case "deliver", "drop":
		e.deliver(t, ehostArg(t, c, "from"), c.Arg("type", ""), n, c.Name == "drop")
	case "stabilize":
		for round := 0; len(e.links[0])+len(e.links[1]) > 0; round++ {
			if round == 100 {
				t.Fatalf("%s: still messages in flight after %d rounds", c.Pos, round)
			}
			for i := range e.links {
				e.deliver(t, i, "", -1, false)
			}
		}
	case "crash":
		i := ehostArg(t, c, "host")
		e.hosts[i].node = nil
		e.links[0], e.links[1] = nil, nil
		e.printf("%s down", e.hosts[i].name)
	case "restart":
		i := ehostArg(t, c, "host")
		if e.hosts[i].node != nil {
			t.Fatalf("%s: %s is up", c.Pos, e.hosts[i].name)
		}
		// A new process has a new connection: what was sent to the old
		// one is gone.
		if k := len(e.links[1-i]); k > 0 {
			e.printf("%d in flight to the old %s lost", k, e.hosts[i].name)
			e.links[1-i] = nil
		}
		e.start(t, i, wire.RoleSecondary)
	case "partition":
		if c.Arg("from", "both") == "both" {
			e.cut = [2]bool{true, true}
		} else {
			e.cut[ehostArg(t, c, "from")] = true
		}
	case "heal":
		e.cut = [2]bool{}
	case "diverge":
		e.hosts[ehostArg(t, c, "host")].g.state ^= 0xdead
	case "fail-restore":
		e.hosts[ehostArg(t, c, "host")].failRestores = max(n, 1)
	case "status":
		e.status()
	default:
		t.Fatalf("%s: unknown command %q", c.Pos, c.Name)
	}
}

func ehostArg(t *testing.T, c *ddtest.Cmd, key string) int {
	switch c.Arg(key, "") {
	case "A":
		return 0
	case "B":
		return 1
	}
	t.Fatalf("%s: %s= must be A or B", c.Pos, key)
	return 0
}

func (e *env) status() {
	for _, h := range e.hosts {
		if h.node == nil {
			e.printf("%s: down", h.name)
			continue
		}
		st := h.node.Status()
		d := fmt.Sprintf("%s: %s epoch=%d last=%d", h.name, st.Role, st.Epoch, st.LastSeq)
		switch {
		case st.Protected:
			d += " protected"
		case st.Syncing:
			d += " syncing"
		case st.Role == lockstep.RolePrimary:
			d += " alone"
		case st.Synced:
			d += " synced"
		}
		if st.Role == lockstep.RolePrimary {
			d += fmt.Sprintf(" acked=%d held=%d released=%d", st.Acked, st.Held, st.Released)
		}
		if st.Diverged {
			d += " diverged"
		}
		e.printf("%s", d)
	}
	for i, l := range e.links {
		if len(l) > 0 {
			e.printf("in flight from %s: %d", e.hosts[i].name, len(l))
		}
	}
}

// exits runs up to k exits of host i's VM.
func (e *env) exits(t *testing.T, i, k int) {
	h := e.hosts[i]
	for range k {
		if h.node == nil || h.paused || h.stalled {
			return
		}
		g := &h.g
		isOut := g.exit%2 == 1
		switch {
		case h.live && isOut:
			if _, err := h.node.HoldOutput(g.exit, 1, g.output()); err != nil {
				t.Fatalf("HoldOutput: %v", err)
			}
			g.exit++
		case h.live:
			data := binary.LittleEndian.AppendUint64(nil, 7*g.exit+1)
			if _, err := h.node.RecordInput(g.exit, 1, data); err != nil {
				t.Fatalf("RecordInput: %v", err)
			}
			g.input(data)
		case isOut:
			at := g.exit
			_, r := h.node.ReplayOutput(at, 1, g.output())
			if r == lockstep.OK || r == lockstep.Diverged {
				g.exit++ // the VM goes on past an output the node took
			}
			if r != lockstep.OK {
				e.printf("%s exit %d: %s", h.name, at, r)
				e.process(t, i)
				return
			}
		default:
			data, r := h.node.NextInput(g.exit, 1)
			if r != lockstep.OK {
				e.printf("%s exit %d: %s", h.name, g.exit, r)
				e.process(t, i)
				return
			}
			g.input(data)
		}
		e.process(t, i)
	}
}

// deliver hands host from's peer what is in flight from it: of type ty
// (every type if empty), the first k (all if k < 0); drop loses them
// instead.
func (e *env) deliver(t *testing.T, from int, ty string, k int, drop bool) {
	to := 1 - from
	var keep [][]byte
	var due []wire.Msg
	for _, b := range e.links[from] {
		m, _, err := wire.Parse(b)
		if err != nil {
			t.Fatalf("a frame did not parse: %v", err)
		}
		if k != 0 && (ty == "" || m.Type().String() == ty) {
			due = append(due, m)
			k--
			continue
		}
		keep = append(keep, b)
	}
	e.links[from] = keep
	for _, m := range due {
		h := e.hosts[to]
		switch {
		case drop:
			e.printf("%s drop %s", e.hosts[from].name, describe(m))
		case e.cut[from] || h.node == nil:
			e.printf("%s lost %s", h.name, describe(m))
		default:
			e.printf("%s recv %s", h.name, describe(m))
			if err := h.node.Step(m); err != nil {
				e.printf("%s step: %v", h.name, err)
			}
			e.process(t, to)
		}
	}
}

// process performs host i's Ready until it has none, as an agent does.
func (e *env) process(t *testing.T, i int) {
	h := e.hosts[i]
	for h.node != nil && h.node.HasReady() {
		n := h.node
		rd := n.Ready()
		var asks []uint64
		for _, c := range rd.Commands {
			e.command(t, h, c, &asks)
		}
		for _, o := range rd.Release {
			e.printf("%s release seq=%d epoch=%d", h.name, o.Seq, o.Epoch)
		}
		for _, m := range rd.Messages {
			e.printf("%s send %s", h.name, describe(m))
			e.links[i] = append(e.links[i], m.Append(nil))
		}
		n.Advance(rd)
		if h.node == nil {
			// Halted: the process is gone, and its connection with it.
			e.links[0], e.links[1] = nil, nil
			e.printf("%s down", h.name)
			return
		}
		// The arbiter answers after the Ready that asked (an agent asks
		// it off the loop): its answer may change what a later Ready holds.
		for _, epoch := range asks {
			granted, fence, err := e.arb.Acquire(context.Background(), evmID, epoch)
			e.printf("%s arbiter epoch=%d granted=%v", h.name, epoch, granted)
			n.ArbiterResult(epoch, granted, fence, err)
		}
	}
}

func (e *env) command(t *testing.T, h *ehost, c lockstep.Command, asks *[]uint64) {
	ck := c.Checkpoint
	switch c.Kind {
	case lockstep.CmdTakeCheckpoint:
		base := ""
		if ck.Base != nil {
			base = fmt.Sprintf(" base=%q", ck.Base)
		}
		e.printf("%s cmd %s id=%d full=%v live=%v chain=%v%s", h.name, c.Kind, ck.ID, ck.Full, ck.Live, ck.Chain, base)
	case lockstep.CmdRestoreCheckpoint:
		e.printf("%s cmd %s id=%d seq=%d parts=%d", h.name, c.Kind, ck.ID, ck.Seq, len(ck.Parts))
	case lockstep.CmdAcquire, lockstep.CmdGoLive:
		e.printf("%s cmd %s epoch=%d", h.name, c.Kind, c.Epoch)
	case lockstep.CmdHalt:
		e.printf("%s cmd %s: %s", h.name, c.Kind, c.Reason)
	default:
		e.printf("%s cmd %s", h.name, c.Kind)
	}
	switch c.Kind {
	case lockstep.CmdStall:
		h.stalled = true
	case lockstep.CmdUnstall:
		h.stalled = false
	case lockstep.CmdPause:
		h.paused = true
	case lockstep.CmdResume:
		h.paused = false
	case lockstep.CmdTakeCheckpoint:
		snap := h.g.snapshot()
		if err := h.node.CheckpointTaken(ck.ID, snap, lockstep.DataDigest(snap)); err != nil {
			e.printf("%s checkpoint taken: %v", h.name, err)
		}
	case lockstep.CmdRestoreCheckpoint:
		if len(ck.Data) != 16 {
			t.Fatalf("%s: restore of %d bytes, want a 16-byte guest snapshot", h.name, len(ck.Data))
		}
		if h.failRestores > 0 {
			h.failRestores--
			err := h.node.CheckpointRestoreFailed(ck.ID, errors.New("planted restore failure"))
			e.printf("%s restore of checkpoint %d failed: CheckpointRestoreFailed returns %v", h.name, ck.ID, err)
			return
		}
		h.g = eguest{exit: binary.LittleEndian.Uint64(ck.Data), state: binary.LittleEndian.Uint64(ck.Data[8:])}
		if err := h.node.CheckpointRestored(ck.ID); err != nil {
			t.Fatalf("CheckpointRestored: %v", err)
		}
	case lockstep.CmdAcquire:
		*asks = append(*asks, c.Epoch)
	case lockstep.CmdGoLive:
		h.live = true
	case lockstep.CmdHalt:
		h.node = nil
	}
}

// describe names a message and the fields a scenario follows.
func describe(m wire.Msg) string {
	s := fmt.Sprintf("%s e%d", m.Type(), m.Head().Epoch)
	switch m := m.(type) {
	case *wire.Hello:
		s += " " + m.Role.String()
	case *wire.Entry:
		s += fmt.Sprintf(" seq=%d exit=%d", m.Seq, m.ExitIndex)
	case *wire.Output:
		s += fmt.Sprintf(" seq=%d exit=%d", m.Seq, m.ExitIndex)
	case *wire.Ack:
		s += fmt.Sprintf(" received=%d compared=%d replayed=%d", m.Received, m.Compared, m.Replayed)
	case *wire.Heartbeat:
		s += fmt.Sprintf(" last=%d released=%d", m.LastSeq, m.ReleasedThrough)
	case *wire.CheckpointChunk:
		s += fmt.Sprintf(" id=%d offset=%d len=%d", m.ID, m.Offset, len(m.Data))
	case *wire.CheckpointDone:
		s += fmt.Sprintf(" id=%d seq=%d restored=%v", m.ID, m.Seq, m.Restored)
	case *wire.CheckpointAck:
		s += fmt.Sprintf(" id=%d through=%d kept=%v missing=%v", m.ID, m.Through, m.Kept, m.Missing)
	case *wire.ResyncRequest:
		s += fmt.Sprintf(" at=%d", m.AtSeq)
		if m.Base != nil {
			s += fmt.Sprintf(" base=%q", m.Base)
		}
	case *wire.GoLive:
		s += fmt.Sprintf(" last=%d", m.LastSeq)
	case *wire.Fence:
		s += fmt.Sprintf(" refused=%d", m.RefusedEpoch)
	}
	return s
}
