// Package e2e builds the network test bed of the end-to-end test and of
// `ftvm demo`: two VM hosts, a client and a switch, each a network namespace
// of this machine, wired with veth pairs and bridges by the real ip
// (iproute2) and nft (nftables) commands.
//
//	                   namespace <p>-sw: the switch
//	+-----------------------------------------------------------------+
//	|                           bridge br0                            |
//	|   port a  <-- CutLink drops -->        port b            port c |
//	+------+------------------------------------+-----------------+---+
//	       | veth                               | veth            | veth
//	+------+-----------------+  +---------------+--------+  +-----+--------+
//	| eth0 (port of br0)     |  | eth0 (port of br0)     |  | eth0         |
//	| br0  10.77.0.1/24      |  | br0  10.77.0.2/24      |  | 10.77.0.3/24 |
//	| tap0 (port of br0)     |  | tap0 (port of br0)     |  |              |
//	|  '-- VM 10.77.0.10     |  |  '-- VM 10.77.0.10     |  | the client   |
//	|      02:66:74:76:6d:01 |  |      02:66:74:76:6d:01 |  +--------------+
//	+------------------------+  +------------------------+   namespace <p>-c
//	 namespace <p>-a: host a     namespace <p>-b: host b
//
// What each piece is for:
//
//   - <p>-sw holds the switch, a bridge whose ports a, b and c are the far
//     ends of the machines' veths. It lives in a namespace of its own so that
//     nothing is added to the machine's own network. CutLink installs an
//     nftables table (bridge family, forward hook) there that drops every
//     frame between ports a and b, in both directions, without a word: to the
//     hosts it looks like a pulled cable, which is what a partition between
//     primary and secondary is; the client still reaches both hosts.
//     HealLink removes the table.
//   - <p>-a and <p>-b are the two VM hosts, where the ftvm daemons run and
//     talk to each other (10.77.0.1 and 10.77.0.2). Each bridges its eth0
//     with a persistent TAP, tap0, so that the VM it runs sits on the same
//     network as everything else, with its own address and MAC, the same on
//     both hosts: whichever host runs the VM live, the client talks to
//     10.77.0.10. The daemon opens tap0 by name through /dev/net/tun
//     (OpenTAP does the same, for tests); while nobody has it open the TAP
//     has no carrier and the bridge forwards nothing into it, so a replica
//     that is not live is off the wire. The switch learns where the VM's MAC
//     is from the frames it sees; a VM that goes live on the other host must
//     send a frame (a gratuitous ARP) before replies can find it there.
//   - <p>-c is the client (10.77.0.3), where the load generator and the
//     checks run: what it sees of a failover is what the outside world sees.
//
// Every machine has loopback up and IPv6 turned off (so that the wire
// carries only what the test and the VM send), and a fixed MAC (HostMAC).
// Namespace names are "<prefix>-a", "<prefix>-b", "<prefix>-c" and
// "<prefix>-sw"; only they carry the prefix, as devices live inside them.
// Two runs with different prefixes never meet. A second Up of a prefix that
// is in use fails, while Up of a prefix whose run crashed first deletes what
// that run left behind (an flock(2) held for the life of the Topology tells
// one from the other).
//
// Code in this process acts as a machine through InNamespace, and through
// the helpers built on it (Dial, Listen, ListenPacket, Ping, OpenTAP), which
// open sockets on a thread that has joined the machine's namespace. Programs
// run there through Command, Run, or Start, which keeps the program's output
// in files for failure reports and stops it with SIGTERM then SIGKILL:
//
//	topo, err := e2e.Up(ctx, "ftvm-demo")
//	if err != nil {
//		return err
//	}
//	defer topo.Down()
//	primary, err := topo.Start(ctx, e2e.HostA, daemonPath, daemonArgs...)
//	...
//	if err := topo.Ping(ctx, e2e.Client, netip.MustParseAddr(e2e.VMAddr)); err != nil {
//		return fmt.Errorf("%v\n%s", err, primary.Tail(40))
//	}
//
// Everything has a limit: each command the package runs is bounded by a
// timeout (DefaultCommandTimeout unless WithCommandTimeout says otherwise)
// as well as by its context, Ping by DefaultPingTimeout when its context has
// no deadline, and a process of Start by its context. A failed command
// returns a *CommandError with the command line and its output.
//
// On the test bed, a Cluster (cluster.go) runs the real ftvm binary as
// processes: ftvm primary and ftvm secondary on hosts a and b, each with
// its own disk, control socket and log under a work directory. Run
// (scenario.go) drives a kvstore pair through a Fault (kill the primary or
// the secondary, cut the link, freeze, isolate or silence the primary) a
// number of rounds, with a kvclient load from the client, and returns a
// Report: failover and take-over times, the client served again by the new
// primary, time to be protected again, hold latency against the
// transport's round trip, and the client's history for bench/linearize.
// Each round also has the client's longest silence during the
// re-protection (Round.JoinGap) with what the client itself did in it:
// the requests it sent, its own longest time without sending (near the
// whole silence when the client's process did not run, which is then no
// silence of the pair's) and the replies ending it that answered a
// resend (TestE2EKillPrimary logs them per round).
// SilencePrimary is a host that loses power or freezes: its daemon is
// stopped (Cluster.Suspend) and its port cut at once (IsolateHost), so
// nothing of it reaches anybody; once the secondary is live the stopped
// daemon is killed, the port opened and the host rejoins as a secondary
// (TestE2ESilentPrimary, silent_test.go, which also reads the client's
// link with a packet socket to split the client's wait after the
// take-over). The tests in
// e2e_test.go, restart_test.go, crash_test.go and the others are built on
// Run and Cluster; `ftvm demo` is Run with a table.
//
// WithPool adds hosts d and e (10.77.0.4 and .5), built as a and b are,
// and gives every VM host three TAPs, tap0 to tap2, one per VM of a pool
// (PoolVMAddr, PoolVMMAC): TestE2EPool (pool_test.go) runs `ftvm host` on
// a, b, d and e over the etcd members of WithEtcd.
//
// The package needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN), network
// namespaces, /dev/net/tun, and the ip and nft commands (CheckTools).
package e2e
