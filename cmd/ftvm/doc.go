// Command ftvm is the one ftvm binary: each subcommand lives in its own file
// and registers itself in init (see commands.go), so adding one never
// touches the others.
//
//	ftvm <command> [arguments]
//	ftvm <command> --help
//
// The daemon (ftvm primary, ftvm secondary) is daemon*.go: daemon.go wires
// the agent to the VMM, the transport, the arbiter and the TAP, applies
// the peer-name rules to the transport's configuration, decides a cold
// start (firstEpoch, from the arbiter's record and the disk's side file of
// diskstate.go) and keeps that side file current; daemon_config.go holds
// its flags and --config file; daemon_net.go the link to whichever
// transport is current (peerLink), the gratuitous ARPs (announce) and the
// stall fence (txFence); daemon_arbiter.go the choice of arbiter
// (--arbiter file|etcd, the etcd client and its TLS), the lease's part of
// ftvm status and the per-epoch release spans; daemon_transport.go the
// --transport choice (which one-sided memory, if any, carries the control
// lane, and why); daemon_reach.go the reachability check;
// daemon_reject.go the logging of refused connections; ckptbound.go the
// largest checkpoint a host accepts; status.go the control socket that
// ftvm status asks; metrics.go the figures of --metrics-listen and of the
// control socket's "sample" (bench/dash), which dash.go's ftvm dash
// shows. arbiter.go and recover.go are the operator's commands
// for cold restarts; host.go (ftvm host) and cluster.go (ftvm cluster)
// are the pool of hosts on etcd, whose logic is the cluster package;
// certs.go, demo.go, sim.go, bench*.go and kvload.go
// the others.
//
// Exit codes: 0 success, 1 failure (the command ran and something failed),
// 2 usage error (unknown command, bad flag or argument). ftvm primary and
// ftvm secondary add 3: halted, or refused as primary (exitHalted in
// daemon_config.go); ftvm kvload uses 3 for a run that failed.
package main
