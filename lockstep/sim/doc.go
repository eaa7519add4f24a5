// Package sim is a deterministic simulator for the lockstep protocol, in the
// spirit of TigerBeetle's VOPR and FoundationDB's simulation testing.
//
// One seed drives everything: a network that delays, loses, duplicates and
// reorders messages and can be partitioned in either direction; crashes of
// either host at any step (a crashed or halted host comes back as a new
// secondary); an arbiter with an atomic test-and-set (arbiter.Memory); and a
// deterministic guest that consumes inputs and emits outputs derived from
// its whole history, which can be perturbed at random points as RDTSC would.
// A checkpoint is the guest's state.
//
// The guest has a small memory (guestPages pages, most writes going to a
// hot few), and each exit writes a page or two chosen from its state. The
// simulator's VMM side (vmm.go) does what the agent and vmm do for a real
// VM: a snapshot taken or restored is the VM's base and clears its dirty
// pages; a secondary's resync request carries its base and dirty pages
// (lockstep.Config.ResyncBase); a primary on the same base answers with an
// increment of the pages either side dirtied, which the secondary applies
// onto its own pages only if it covers every page it dirtied, else
// (and, planted, RestoreFailPct of the time) the restore fails
// (Node.CheckpointRestoreFailed) and a full checkpoint follows. The resync
// checker compares the state after the restore, every page included, with
// the primary's at the checkpoint's position; bugs.IncrementPageShort
// (an increment one page short) is caught by it.
//
// Every message crosses the real wire encoding. Checkers watch from outside
// the nodes (see Checker): the output rule, external consistency across
// failovers, one releaser per epoch, resync state equality, liveness once
// the network heals, storage (a secondary applies to its disk only what the
// world saw, in order), traffic (a checkpoint costs at most about twice its
// size when nothing of it was lost) and diverged-live (below). Run does one seed; RunMany a range, with a
// reproduce command for each failing seed:
//
//	ftvm sim --seeds 100000              # both modes, split over the cores
//	ftvm sim --mode compare --seed 42    # one seed with its trace
//
// or, without building the binary, the test flags of TestSimSeeds:
//
//	go test ./lockstep/sim -run 'TestSimSeeds$' -sim.seeds 100000
//	go test ./lockstep/sim -run 'TestSimSeeds$' -v -sim.mode compare -sim.seed 42
//
// Divergence is injected in both modes. Ack-on-receipt releases an output
// once its inputs have reached the secondary, before any comparison, so a
// secondary that found its VM off the primary's path and was not resynced
// must halt rather than go live if the primary is lost (the diverged-live
// checker; bugs.GoLiveDiverged turns the rule off, and then the
// consistency checker sees the world contradicted). A divergence the
// secondary has not found yet cannot be told from a correct replica: in
// ack-on-receipt runs the simulator injects one only while the pair is
// healthy and connected, and injects no crash or partition until the node
// found it, as it never crashes both hosts at once.
package sim
