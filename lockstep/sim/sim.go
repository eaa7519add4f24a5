package sim

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"

	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/lockstep/arbiter"
	"github.com/ftvm/ftvm/lockstep/internal/bugs"
	"github.com/ftvm/ftvm/lockstep/wire"
)

const vmID = "sim-vm"

// Options shape a run. The zero value is not useful: start from
// DefaultOptions.
type Options struct {
	Mode lockstep.Mode
	// SafetySteps of random faults, then LivenessSteps with the network
	// healed and no faults, within which the pair must be protected again
	// and release LivenessOutputs outputs under protection.
	SafetySteps     int
	LivenessSteps   int
	LivenessOutputs int
	// Faults turns on random crashes, partitions and divergence; with it
	// off only the scenario's own actions happen.
	Faults bool
	// Network, in percent per message and steps of delay.
	LossPct, DupPct int
	MaxDelaySteps   int
	// Fault rates, in parts per 10,000 steps (or guest exits, for
	// divergence).
	CrashPer10k, PartitionPer10k, HealPer10k, DivergePer10k int
	// ResetPct is the chance that a crash reaches the partner at once as a
	// broken connection (Node.PeerLost), as a dead process's sockets do;
	// otherwise it learns only from silence. FalseAlarmPer10k is the rate
	// of PeerLost calls while both hosts live (a spurious reset).
	ResetPct, FalseAlarmPer10k int
	// DivergeInReceiptMode injects divergence in ack-on-receipt runs too
	// (on by default: a secondary that diverged there must halt rather
	// than go live, and the diverged-live checker sees that it does).
	DivergeInReceiptMode bool
	// PrecopyBySeed gives each seed its own pre-copy setting: seed%3 live
	// rounds (Node.PrecopyRounds), so joins are tried both with a paused
	// full checkpoint and with chains of one and two live parts.
	PrecopyBySeed bool
	// AgentLagPct is the chance, per host and step, that its agent does not
	// get to the node's Ready this step (the vCPU runs on meanwhile).
	AgentLagPct int
	// CheckpointFailPct is the chance, in the safety phase, that the VMM
	// fails to take a checkpoint (Node.CheckpointFailed): the primary must
	// give up that sync and go on, never stop.
	CheckpointFailPct int
	// CheckpointPadBytes pads every full checkpoint the simulator hands a
	// node (the guest's state is a few hundred bytes; a VM's is its
	// memory): checkpoints then span many chunks and windows, as real ones
	// do. An increment is not padded: it holds the pages dirtied only.
	CheckpointPadBytes int
	// Incremental has secondaries send a resync base (Config.ResyncBase),
	// so that a primary on the same base answers a resync with an
	// increment of the pages either side dirtied (see vmm.go).
	Incremental bool
	// RestoreFailPct is the chance, in the safety phase, that a
	// secondary's VMM fails to restore an increment
	// (Node.CheckpointRestoreFailed): it must get a full one next.
	RestoreFailPct int
	// TickEverySteps is how many steps make one protocol tick.
	TickEverySteps int
	// RestartDelaySteps is how long a crashed or halted host stays down
	// before it comes back as a new secondary.
	RestartDelaySteps int
	// Node is the protocol configuration for both hosts (VMID, Role and
	// Mode are set by the simulator).
	Node lockstep.Config
	// Bugs plants known bugs in the nodes (tests only).
	Bugs bugs.Set
	// Trace, if set, receives one line per notable event.
	Trace func(string)
	// Frames, if set, sees every frame a host sends, encoded, before the
	// network decides its fate (TestDeterministic hashes them).
	Frames func(from string, frame []byte)

	// Harsh marks options made by HarshOptions, so that a failing seed's
	// reproduce command names the same regime.
	Harsh bool
}

// DefaultOptions is a run of a few thousand steps with all faults on.
func DefaultOptions(mode lockstep.Mode) Options {
	return Options{
		Mode:                 mode,
		SafetySteps:          1200,
		LivenessSteps:        600,
		LivenessOutputs:      20,
		Faults:               true,
		LossPct:              3,
		DupPct:               3,
		MaxDelaySteps:        6,
		CrashPer10k:          20,
		PartitionPer10k:      25,
		HealPer10k:           150,
		ResetPct:             50,
		FalseAlarmPer10k:     5,
		PrecopyBySeed:        true,
		DivergeInReceiptMode: true,
		DivergePer10k:        60,
		TickEverySteps:       3,
		RestartDelaySteps:    60,
		CheckpointPadBytes:   200,
		CheckpointFailPct:    3,
		Incremental:          true,
		RestoreFailPct:       5,
		Node: lockstep.Config{
			LogWindowEntries:      32,
			HeartbeatTicks:        2,
			RetransmitTicks:       3,
			PeerTimeoutTicks:      12,
			CheckpointChunkBytes:  16,
			CheckpointWindowBytes: 64,
			MaxPendingOutputs:     8,
			PrecopyDoneBytes:      1, // a live increment is never small enough: every round is taken
			SyncTimeoutTicks:      36,
		},
	}
}

// HarshOptions is a second fault regime: a lossy, slow, reordering network
// with frequent partitions and crashes, agents slow to act on Ready, and a
// tiny log window, so timeouts, retransmissions and flow control are hit far
// more often than by default.
func HarshOptions(mode lockstep.Mode) Options {
	o := DefaultOptions(mode)
	o.Harsh = true
	o.LossPct, o.DupPct, o.MaxDelaySteps = 20, 10, 15
	o.CrashPer10k, o.PartitionPer10k, o.HealPer10k = 40, 60, 100
	o.DivergePer10k = 150
	o.AgentLagPct = 30
	o.Node.LogWindowEntries = 8
	o.Node.MaxPendingOutputs = 4
	o.Node.PeerTimeoutTicks = 8
	// Checkpoints a few chunks long: over this network a long one would
	// keep the pair syncing, and crashes wait for a synced pair.
	o.CheckpointPadBytes = 32
	o.LivenessSteps = 900
	return o
}

// Result is what one run found.
type Result struct {
	Seed       uint64
	Violations []Violation // empty when every checker held
	Outputs    int         // distinct outputs the world saw
	Repeats    int         // outputs the world saw twice (allowed after a go-live)
	Failovers  int         // go-lives of a secondary
	Resyncs    int         // checkpoints restored on a secondary
	// Increments counts the resyncs restored as an increment onto the
	// secondary's VM, RestoreFailures those its VMM refused or failed
	// (a full checkpoint followed).
	Increments, RestoreFailures int
	Crashes                     int
	Halts                       int
	Messages                    int
	Steps                       int
}

// Failed reports whether a checker fired.
func (r Result) Failed() bool { return len(r.Violations) > 0 }

func (r Result) String() string {
	s := fmt.Sprintf("seed %d: %d outputs, %d repeats, %d failovers, %d resyncs (%d increments, %d failed), %d crashes, %d halts, %d messages",
		r.Seed, r.Outputs, r.Repeats, r.Failovers, r.Resyncs, r.Increments, r.RestoreFailures, r.Crashes, r.Halts, r.Messages)
	if r.Failed() {
		for _, v := range r.Violations {
			s += "\n  " + v.String()
		}
	}
	return s
}

// Run simulates one seed with random faults and returns what the checkers
// found. The same seed and options give the same run.
func Run(seed uint64, opts Options) Result {
	s := New(seed, opts)
	s.RunSteps(opts.SafetySteps + opts.LivenessSteps)
	return s.Result()
}

// Sim is a running simulation; scenario tests drive it step by step.
type Sim struct {
	opts  Options
	rng   *rand.Rand
	seed  uint64
	now   int
	hosts [2]*host
	net   []packet
	due   []packet // scratch for deliver
	seqNo int      // tie-break so delivery order is deterministic
	arb   *arbiter.Memory
	calls []arbCall
	// cut[i] drops messages from host i to the other host.
	cut      [2]bool
	dropNext map[wire.Type]int // scenario hook: drop the next n messages of a type
	nextInc  int
	// nextToken names the snapshots taken (a VM's base; see vmm.go).
	nextToken uint64
	chk       *checker
	res       Result
	healed    bool
	// unseen[i]: host i's guest was perturbed in ack-on-receipt mode and
	// its node has not found out yet (no resync asked, no restore).
	unseen [2]bool
}

type host struct {
	name    string
	idx     int
	inc     int // incarnation; 0 while down
	node    *lockstep.Node
	g       *guest
	live    bool // the guest takes live inputs (primary)
	paused  bool
	stalled bool
	fuzzy   *fuzzyCheckpoint
	downAt  int
	upAt    int
	// loadBase and loaded are the pre-copy parts the node handed over
	// ahead of their chain's restore (CmdLoadPart): checkpoints loadBase,
	// loadBase+1, ... in order.
	loadBase uint64
	loaded   [][]byte
}

// fuzzyCheckpoint is a checkpoint of a running vCPU: the copy completes
// some exits after it was asked for, so it does not show the VM at the log
// position the node believes.
type fuzzyCheckpoint struct {
	id       uint64
	snap     []byte
	exitsTil int
	deadline int
}

type packet struct {
	due   int
	order int
	from  int
	toInc int
	b     []byte
}

type arbCall struct {
	due   int
	host  int
	inc   int
	epoch uint64
}

// New sets up a primary on host A and a joining secondary on host B.
func New(seed uint64, opts Options) *Sim {
	if opts.PrecopyBySeed {
		opts.Node.PrecopyRounds = int(seed % 3)
	}
	s := &Sim{
		opts:     opts,
		rng:      rand.New(rand.NewPCG(seed, seed^0x5eed)),
		seed:     seed,
		arb:      arbiter.NewMemory(),
		dropNext: map[wire.Type]int{},
	}
	s.res.Seed = seed
	s.chk = newChecker(s)
	s.hosts[0] = &host{name: "A", idx: 0}
	s.hosts[1] = &host{name: "B", idx: 1}
	s.start(s.hosts[0], wire.RolePrimary)
	s.start(s.hosts[1], wire.RoleSecondary)
	return s
}

func (s *Sim) tracef(format string, args ...any) {
	if s.opts.Trace != nil {
		s.opts.Trace(fmt.Sprintf("t=%d ", s.now) + fmt.Sprintf(format, args...))
	}
}

func (s *Sim) start(h *host, role wire.Role) {
	cfg := s.opts.Node
	cfg.VMID, cfg.Role, cfg.Mode = vmID, role, s.opts.Mode
	cfg.Persistent = func(device uint16) bool { return device == persistentDevice }
	b := s.opts.Bugs
	cfg.Bugs = &b
	if s.opts.Incremental {
		cfg.ResyncBase = func() []byte { return resyncBase(h.g) }
	}
	n, err := lockstep.NewNode(cfg)
	if err != nil {
		panic(fmt.Sprintf("sim: bad node config: %v", err)) // a bug in the options, not in a run
	}
	s.nextInc++
	h.inc, h.node, h.g, h.live, h.paused, h.stalled, h.fuzzy = s.nextInc, n, nil, false, false, false, nil
	if role == wire.RolePrimary {
		h.g, h.live = &guest{}, true
		s.chk.primaryState(h, 0)
	}
	s.tracef("%s up as %s (incarnation %d)", h.name, role, h.inc)
}

func (s *Sim) down(h *host, why string) {
	s.tracef("%s down: %s", h.name, why)
	s.unseen[h.idx] = false
	h.inc, h.node, h.g = 0, nil, nil
	h.loadBase, h.loaded = 0, nil
	h.downAt, h.upAt = s.now, s.now+s.opts.RestartDelaySteps
}

// Crash kills host i now (scenario hook); it restarts as a new secondary
// after RestartDelaySteps.
func (s *Sim) Crash(i int) {
	if s.hosts[i].node != nil {
		s.res.Crashes++
		s.down(s.hosts[i], "crash")
	}
}

// Partition cuts (or restores) delivery from host from to the other host.
func (s *Sim) Partition(from int, cut bool) { s.cut[from] = cut }

// Heal restores both directions.
func (s *Sim) Heal() { s.cut = [2]bool{} }

// DropNext drops the next n messages of type t, whoever sends them.
func (s *Sim) DropNext(t wire.Type, n int) { s.dropNext[t] += n }

// Diverge perturbs host i's guest state (as RDTSC would).
func (s *Sim) Diverge(i int) {
	if g := s.hosts[i].g; g != nil {
		g.perturb(s.rng.Uint64())
		s.tracef("%s guest perturbed", s.hosts[i].name)
	}
}

// RunSteps advances the simulation by n steps.
func (s *Sim) RunSteps(n int) {
	for range n {
		s.step()
	}
}

// Result returns the checkers' findings so far, liveness included.
func (s *Sim) Result() Result {
	r := s.res
	r.Violations = slices.Clone(s.chk.violations)
	if s.healed && s.chk.protectedSinceHeal < s.opts.LivenessOutputs && s.now >= s.opts.SafetySteps+s.opts.LivenessSteps {
		r.Violations = append(r.Violations, Violation{Checker: Liveness, Step: s.now, Msg: fmt.Sprintf("%d steps after the network healed only %d outputs were released under protection, want %d",
			s.opts.LivenessSteps, s.chk.protectedSinceHeal, s.opts.LivenessOutputs)})
	}
	r.Outputs, r.Repeats, r.Steps = len(s.chk.world), s.chk.repeats, s.now
	return r
}

// Describe is a one-line state of both hosts, for scenario golden files.
func (s *Sim) Describe() string {
	var parts []string
	for _, h := range s.hosts {
		if h.node == nil {
			parts = append(parts, h.name+":down")
			continue
		}
		st := h.node.Status()
		d := fmt.Sprintf("%s:%s/e%d", h.name, st.Role, st.Epoch)
		switch {
		case st.Protected:
			d += "/protected"
		case st.Syncing:
			d += "/syncing"
		case st.Role == lockstep.RolePrimary:
			d += "/alone"
		case st.Synced:
			d += "/synced"
		}
		parts = append(parts, d)
	}
	return strings.Join(parts, " ")
}

func (s *Sim) step() {
	s.now++
	safety := s.now <= s.opts.SafetySteps
	if !safety && !s.healed && s.opts.Faults {
		s.healed = true
		s.Heal()
		s.chk.protectedSinceHeal = 0
		s.tracef("network healed; liveness phase")
	}
	if safety && s.opts.Faults {
		s.injectFaults()
	}
	for _, h := range s.hosts {
		if h.node == nil && h.upAt <= s.now {
			s.start(h, wire.RoleSecondary)
		}
	}
	s.deliver()
	s.answerArbiter()
	order := [2]int{0, 1}
	if s.rng.IntN(2) == 1 {
		order = [2]int{1, 0}
	}
	for _, i := range order {
		if s.rng.IntN(10) < 7 {
			s.guestStep(s.hosts[i])
		}
	}
	if s.now%s.opts.TickEverySteps == 0 {
		for _, h := range s.hosts {
			if h.node != nil {
				h.node.Tick()
			}
		}
	}
	for _, i := range order {
		if s.opts.AgentLagPct == 0 || s.rng.IntN(100) >= s.opts.AgentLagPct {
			s.drain(s.hosts[i])
		}
	}
}

func (s *Sim) chance(per10k int) bool { return per10k > 0 && s.rng.IntN(10000) < per10k }

func (s *Sim) injectFaults() {
	if s.unseen[0] || s.unseen[1] {
		// Ack-on-receipt assumes replay is deterministic: a divergence the
		// secondary has not found yet when its primary is lost cannot be
		// told from a correct replica, and the output after its log's end
		// may contradict the world. A failure meanwhile is a second one.
		return
	}
	if s.chance(s.opts.CrashPer10k) {
		i := s.rng.IntN(2)
		// Two failures at once lose the VM by design; crash only a host
		// whose partner could carry on.
		if s.pairHealthy() {
			s.Crash(i)
			if peer := s.hosts[1-i]; s.rng.IntN(100) < s.opts.ResetPct && peer.node != nil {
				s.tracef("%s sees its connection reset", peer.name)
				peer.node.PeerLost()
			}
		}
	}
	if s.chance(s.opts.FalseAlarmPer10k) {
		if h := s.hosts[s.rng.IntN(2)]; h.node != nil {
			s.tracef("%s sees a spurious connection reset", h.name)
			h.node.PeerLost()
		}
	}
	if s.chance(s.opts.PartitionPer10k) {
		switch s.rng.IntN(3) {
		case 0:
			s.cut = [2]bool{true, true}
		default:
			s.cut[s.rng.IntN(2)] = true
		}
		s.tracef("partition A->B cut=%v B->A cut=%v", s.cut[0], s.cut[1])
	}
	if (s.cut[0] || s.cut[1]) && s.chance(s.opts.HealPer10k) {
		s.Heal()
		s.tracef("partition healed")
	}
}

func (s *Sim) pairHealthy() bool {
	var p, sec bool
	var epochs [2]uint64
	for i, h := range s.hosts {
		if h.node == nil {
			return false
		}
		st := h.node.Status()
		epochs[i] = st.Epoch
		p = p || st.Role == lockstep.RolePrimary && (st.Protected || st.Syncing)
		// In ack-on-receipt mode a diverged secondary cannot carry on
		// either: it halts rather than go live.
		sec = sec || st.Role == lockstep.RoleSecondary && st.Synced && !(st.Diverged && s.opts.Mode == lockstep.AckOnReceipt)
	}
	// A secondary synced to an older epoch of the primary holds a state
	// the primary has moved past: it is about to rejoin, not to take over.
	return p && sec && epochs[0] == epochs[1]
}

func (s *Sim) guestStep(h *host) {
	if h.node == nil || h.g == nil || h.paused || h.stalled {
		return
	}
	g := h.g
	isOut, kd := g.next()
	if h.live {
		if h.fuzzy != nil {
			defer s.fuzzyProgress(h)
		}
		g.run()
		if isOut {
			data := g.peekOutput(kd)
			if _, err := h.node.HoldOutput(g.exit, kd, data); err != nil {
				return
			}
			g.commitOutput()
			s.chk.primaryOutput(h, h.node.Status().LastSeq, data)
		} else {
			data := binary.LittleEndian.AppendUint64(nil, s.rng.Uint64())
			if _, err := h.node.RecordInput(g.exit, kd, data); err != nil {
				return
			}
			g.applyInput(data)
		}
		s.chk.primaryState(h, h.node.Status().LastSeq)
		return
	}

	// In ack-on-receipt mode a diverged secondary cannot take over, so a
	// divergence while its primary is gone is a second failure at once,
	// which loses the VM by design (as two crashes would).
	receiptOK := s.opts.DivergeInReceiptMode && s.pairHealthy() && !s.cut[0] && !s.cut[1]
	// A diverged guest waits at the exit that diverged, as the agent's
	// vCPU does, and so does one whose node restores a checkpoint (or
	// joins): it does not run on to meet another RDTSC, nor dirty pages
	// its resync base (sent already) lacks. (The node took its output;
	// an agent completes that exit only if it goes live.)
	st := h.node.Status()
	waiting := st.Diverged || !st.Synced
	if s.opts.Faults && (s.opts.Mode == lockstep.AckOnCompare || receiptOK) && s.now <= s.opts.SafetySteps && s.chance(s.opts.DivergePer10k) && !waiting {
		s.Diverge(h.idx)
		s.unseen[h.idx] = s.opts.Mode == lockstep.AckOnReceipt
		isOut, kd = g.next()
	}
	if !waiting {
		g.run()
	}
	if isOut {
		data := g.peekOutput(kd)
		if _, r := h.node.ReplayOutput(g.exit, kd, data); r == lockstep.OK || r == lockstep.Diverged {
			g.commitOutput()
			s.chk.secondaryOutput(h, data)
		}
		return
	}
	if data, r := h.node.NextInput(g.exit, kd); r == lockstep.OK {
		g.applyInput(data)
	}
}

func (s *Sim) fuzzyProgress(h *host) {
	h.fuzzy.exitsTil--
	if h.fuzzy.exitsTil <= 0 {
		s.captureFuzzy(h)
	}
}

func (s *Sim) captureFuzzy(h *host) {
	f := h.fuzzy
	h.fuzzy = nil
	if h.node != nil {
		_ = h.node.CheckpointTaken(f.id, f.snap, lockstep.DataDigest(f.snap))
	}
}

func (s *Sim) drain(h *host) {
	for h.node != nil && h.node.HasReady() {
		rd := h.node.Ready()
		n := h.node
		for _, c := range rd.Commands {
			s.command(h, c)
		}
		for _, o := range rd.Release {
			s.chk.release(h, o)
		}
		for _, m := range rd.Messages {
			s.sendMsg(h, m)
		}
		n.Advance(rd)
		if h.node == nil {
			return
		}
	}
	if !h.live {
		s.chk.held(h)
	}
	if h.fuzzy != nil && h.fuzzy.deadline <= s.now {
		s.captureFuzzy(h)
	}
}

func (s *Sim) command(h *host, c lockstep.Command) {
	if h.node == nil {
		return
	}
	if c.Kind != lockstep.CmdAcquire && c.Kind != lockstep.CmdRestoreCheckpoint && c.Kind != lockstep.CmdPersist && c.Kind != lockstep.CmdLoadPart {
		live := ""
		if c.Kind == lockstep.CmdTakeCheckpoint && c.Checkpoint.Live {
			live = " (live, a pre-copy part)"
		}
		s.tracef("%s %s%s", h.name, c.Kind, live)
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
		if s.opts.Faults && s.now <= s.opts.SafetySteps && s.rng.IntN(100) < s.opts.CheckpointFailPct {
			err := h.node.CheckpointFailed(c.Checkpoint.ID, fmt.Errorf("sim: snapshot failed"))
			s.tracef("%s checkpoint %d failed: %v", h.name, c.Checkpoint.ID, err)
			return
		}
		snap := s.takeSnapshot(h, c.Checkpoint)
		if snap[0] == snapIncrement {
			s.tracef("%s checkpoint %d is an increment of %d pages", h.name, c.Checkpoint.ID, (len(snap)-snapFixed)/8)
		}
		if h.paused {
			_ = h.node.CheckpointTaken(c.Checkpoint.ID, snap, lockstep.DataDigest(snap))
		} else {
			// Copying a running VM: the copy starts now and completes some
			// exits later, so it shows the VM as it was when it started.
			h.fuzzy = &fuzzyCheckpoint{id: c.Checkpoint.ID, snap: snap, exitsTil: 1 + s.rng.IntN(3), deadline: s.now + 4}
		}
	case lockstep.CmdRestoreCheckpoint:
		g, incr, err := s.restoreSnapshot(h, c.Checkpoint.Data)
		// A planted failure needs a primary to answer it with a full
		// checkpoint: without one the secondary, its VM gone, waits for
		// ever, which is a second failure on top of the first.
		peer := s.hosts[1-h.idx].node
		primaryUp := peer != nil && peer.Status().Role == lockstep.RolePrimary
		if err == nil && incr && primaryUp && s.opts.Faults && s.now <= s.opts.SafetySteps && s.rng.IntN(100) < s.opts.RestoreFailPct {
			err = errPlanted
		}
		if err != nil && incr && refused(err) {
			// The VM is of no use now, as the agent's is once a restore
			// onto it failed: the node joins again for a full one.
			s.res.RestoreFailures++
			h.g = nil
			h.loadBase, h.loaded = 0, nil
			ferr := h.node.CheckpointRestoreFailed(c.Checkpoint.ID, err)
			s.tracef("%s restore of increment %d failed: %v (node: %v)", h.name, c.Checkpoint.ID, err, ferr)
			return
		}
		if err != nil {
			s.chk.violate(Harness, "restore: %v", err)
			return
		}
		ahead := s.loadedAhead(h, c.Checkpoint)
		h.g = g
		s.unseen[h.idx] = false
		s.res.Resyncs++
		kind := ""
		if incr {
			s.res.Increments++
			kind = " (an increment)"
		}
		s.chk.restored(h, c.Checkpoint.Seq, g.snapshot())
		chain := ""
		if len(c.Checkpoint.Parts) > 0 {
			chain = fmt.Sprintf(" after %d pre-copy parts (%d loaded ahead)", len(c.Checkpoint.Parts), ahead)
		}
		s.tracef("%s restored checkpoint %d at seq %d%s%s", h.name, c.Checkpoint.ID, c.Checkpoint.Seq, kind, chain)
		_ = h.node.CheckpointRestored(c.Checkpoint.ID)
	case lockstep.CmdAcquire:
		s.calls = append(s.calls, arbCall{due: s.now + 1 + s.rng.IntN(4), host: h.idx, inc: h.inc, epoch: c.Epoch})
	case lockstep.CmdGoLive:
		h.live = true
		s.res.Failovers++
		// The new primary's log continues from here with this guest state.
		s.chk.primaryState(h, h.node.Status().LastSeq)
		s.chk.wentLive(h, c.Epoch)
		s.tracef("%s goes live in epoch %d", h.name, c.Epoch)
	case lockstep.CmdHalt:
		s.res.Halts++
		s.down(h, "halt: "+c.Reason)
	case lockstep.CmdPersist:
		s.chk.persisted(h, c.Output)
	case lockstep.CmdLoadPart:
		s.loadPart(h, c.Checkpoint)
	}
}

// loadPart takes a pre-copy part handed over ahead of its chain's end. The
// agent may replace the host's VM by the one it loads parts into, so a
// part may come only while that VM is of no use: the host joins (it is
// not live, holds no restored checkpoint and has not diverged from one).
// Parts come in their chain's order, from its full first.
func (s *Sim) loadPart(h *host, c lockstep.Checkpoint) {
	full := ""
	if c.Full {
		full = " (full)"
	}
	s.tracef("%s load-part %d%s", h.name, c.ID, full)
	if st := h.node.Status(); h.live || st.Synced || st.Diverged {
		s.chk.violate(Resync, "%s was handed pre-copy part %d to load while its VM is in use (live=%v synced=%v diverged=%v)", h.name, c.ID, h.live, st.Synced, st.Diverged)
	}
	switch {
	case c.Full:
		h.loadBase, h.loaded = c.ID, nil
	case h.loadBase == 0 || c.ID != h.loadBase+uint64(len(h.loaded)):
		s.chk.violate(Resync, "%s was handed pre-copy part %d to load after parts %d..%d", h.name, c.ID, h.loadBase, h.loadBase+uint64(len(h.loaded))-1)
		h.loadBase, h.loaded = 0, nil
		return
	}
	h.loaded = append(h.loaded, bytes.Clone(c.Data))
}

// loadedAhead counts the parts of the chain c ends that were loaded ahead
// of it (a prefix of c.Parts), checking that each is the part c carries,
// and forgets them: a restore replaces the VM they were loaded into.
func (s *Sim) loadedAhead(h *host, c lockstep.Checkpoint) int {
	base, loaded := h.loadBase, h.loaded
	h.loadBase, h.loaded = 0, nil
	if len(c.Parts) == 0 || base != c.ID-uint64(len(c.Parts)) {
		return 0
	}
	n := 0
	for i, p := range loaded {
		if i >= len(c.Parts) || !bytes.Equal(p, c.Parts[i]) {
			s.chk.violate(Resync, "%s loaded part %d ahead of checkpoint %d, but the restore carries another", h.name, base+uint64(i), c.ID)
			break
		}
		n++
	}
	return n
}

func (s *Sim) answerArbiter() {
	rest := s.calls[:0]
	var due []arbCall
	for _, c := range s.calls {
		if c.due <= s.now {
			due = append(due, c)
		} else {
			rest = append(rest, c)
		}
	}
	s.calls = rest
	for _, c := range due {
		h := s.hosts[c.host]
		if h.inc != c.inc {
			continue // the asker died; its request never reached the arbiter
		}
		if s.opts.Faults && s.now <= s.opts.SafetySteps && s.rng.IntN(20) == 0 {
			h.node.ArbiterResult(c.epoch, false, 0, fmt.Errorf("sim: arbiter unreachable"))
			continue
		}
		granted, fence, err := s.arb.Acquire(context.Background(), vmID, c.epoch)
		if granted {
			s.chk.granted(h, c.epoch)
		}
		s.tracef("%s asks arbiter for epoch %d: granted=%v", h.name, c.epoch, granted)
		h.node.ArbiterResult(c.epoch, granted, fence, err)
	}
}

func (s *Sim) sendMsg(h *host, m wire.Msg) {
	s.chk.sent(h, m)
	if m.Type() == wire.TypeResyncRequest {
		s.unseen[h.idx] = false
	}
	s.res.Messages++
	if k := s.dropNext[m.Type()]; k > 0 {
		s.dropNext[m.Type()] = k - 1
		s.chk.lost(m.Type())
		s.tracef("%s %s dropped (scenario)", h.name, m.Type())
		return
	}
	b := m.Append(nil)
	if s.opts.Frames != nil {
		s.opts.Frames(h.name, b)
	}
	to := s.hosts[1-h.idx]
	copies := 1
	if s.opts.Faults && s.now <= s.opts.SafetySteps {
		if s.rng.IntN(100) < s.opts.LossPct {
			copies = 0
			s.chk.lost(m.Type())
		} else if s.rng.IntN(100) < s.opts.DupPct {
			copies = 2
		}
	}
	for range copies {
		s.seqNo++
		s.net = append(s.net, packet{due: s.now + 1 + s.rng.IntN(s.opts.MaxDelaySteps), order: s.seqNo, from: h.idx, toInc: to.inc, b: b})
	}
}

func (s *Sim) deliver() {
	due := s.due[:0]
	rest := s.net[:0]
	for _, p := range s.net {
		if p.due <= s.now {
			due = append(due, p)
		} else {
			rest = append(rest, p)
		}
	}
	s.net = rest
	s.due = due
	slices.SortFunc(due, func(a, b packet) int { return a.order - b.order })
	for _, p := range due {
		to := s.hosts[1-p.from]
		// A connection to a host that restarted is gone, and so is what
		// was in flight on it; a cut link drops what crosses it.
		if s.cut[p.from] || to.node == nil || to.inc != p.toInc {
			s.chk.lost(wire.Type(p.b[1]))
			continue
		}
		m, _, err := wire.Parse(p.b)
		if err != nil {
			s.chk.violate(Harness, "wire: a frame the simulator encoded did not parse: %v", err)
			continue
		}
		s.chk.delivered(to, m)
		_ = to.node.Step(m)
	}
}
