// Package probe times, from outside a running ftvm daemon and with eBPF,
// where an output spends the time a primary holds it: from the vCPU's
// exit, through the log record's send and the secondary's
// acknowledgement, to its release and the frame's entry into the TAP, and
// how long each of the daemon's threads (and its peer's) waited for a CPU.
//
// The kernel side (bpf/probe.c) keeps one histogram a stage in a BPF map;
// user space folds them into hdrhistogram (Snapshot). Attach needs root,
// BPF, tracefs (mounted when missing) and a daemon binary with its symbol
// table; the probe points are the functions agent.probeOutputHeld,
// agent.probeAckReceived and agent.probeOutputReleased, found by name in
// the binary's ELF, so a rebuilt daemon needs no change here.
//
//	p, err := probe.Attach(probe.Config{PID: pid})
//	if err != nil {
//		return err
//	}
//	defer p.Close()
//	time.Sleep(10 * time.Second)
//	snap, err := p.Snapshot()
//	fmt.Println(snap.Stage(probe.StageHold).ValueAtQuantile(99))
//
// `ftvm probe` is the command around it.
package probe
