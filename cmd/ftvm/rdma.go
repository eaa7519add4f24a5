package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/ftvm/ftvm/rdma"
	"github.com/ftvm/ftvm/rdma/verbs"
)

// rdmaCommands holds every `ftvm rdma <name>`.
var rdmaCommands = newRegistry("ftvm rdma")

func init() {
	commands.add(&command{
		name:    "rdma",
		summary: "RDMA devices, ports and GIDs, and which one reaches a peer",
		run:     func(e *env, args []string) int { return rdmaCommands.dispatch(e, args) },
	})
	rdmaCommands.add(&command{
		name:    "devices",
		summary: "list RDMA devices, ports, states, GIDs with their types, and netdevs",
		run:     runRdmaDevices,
	})
	rdmaForPeer = verbsForPeer
}

// verbsForPeer is the daemon's rdmaForPeer: the verbs provider on the
// device that routes to peer (host:port), or on any device of this host
// for an empty peer; an error says why there is none (a build without
// RDMA support included).
func verbsForPeer(peer string) (rdma.Provider, error) {
	if !verbs.Supported {
		return nil, verbs.ErrNotBuilt
	}
	if peer == "" {
		cfg, err := verbs.FindAny()
		if err != nil {
			return nil, err
		}
		return verbs.New(cfg)
	}
	host, _, err := net.SplitHostPort(peer)
	if err != nil {
		host = peer
	}
	addr, err := netip.ParseAddr(host)
	if err != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		addrs, lerr := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		if lerr != nil || len(addrs) == 0 {
			return nil, fmt.Errorf("resolving the peer %q: %v", host, lerr)
		}
		addr = addrs[0]
	}
	if _, why, ok := verbs.Available(addr); !ok {
		return nil, fmt.Errorf("%s", why)
	}
	return verbs.NewForPeer(addr)
}

func runRdmaDevices(e *env, args []string) int {
	fs := flag.NewFlagSet("ftvm rdma devices", flag.ContinueOnError)
	peer := fs.String("peer", "", "also say which device, port and GID would reach this peer `address`, or why none would (what --transport auto decides)")
	asJSON := fs.Bool("json", false, "print the devices as JSON")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `usage: ftvm rdma devices [--peer ADDRESS] [--json]

Lists the RDMA devices in /sys/class/infiniband: each port with its state
and link layer, and its GID table (index, GID, type, netdev). The verbs
transport speaks RoCE v2 only, and picks the RoCE v2 GID of the address it
sends from by looking it up in this table, never by a fixed index.

With --peer, it also says what --transport auto would decide for that
peer: the netdev the kernel routes the address through, the RDMA device
and port on it, or why RDMA is not available (no device on the route, port
down, no RoCE v2 GID, or an ftvm built without RDMA support).

This host's kernel may have no RDMA; soft-RoCE, where the kernel has it
(rdma_rxe), adds a device on a netdev with:
  rdma link add rxe0 type rxe netdev eth0

Exit codes: 0 ok, 1 no device (or --peer not reachable over RDMA), 2 usage error.

flags:
`)
		fs.PrintDefaults()
	}
	if done, code := parseFlags(e, fs, args); done {
		return code
	}
	var peerAddr netip.Addr
	if *peer != "" {
		a, err := netip.ParseAddr(*peer)
		if err != nil {
			fmt.Fprintf(e.stderr, "ftvm rdma devices: --peer %q is not an IP address\n", *peer)
			return exitUsage
		}
		peerAddr = a
	}
	devs, err := verbs.Devices()
	if err != nil {
		fmt.Fprintf(e.stderr, "ftvm rdma devices: %v\n", err)
		return exitFailure
	}
	if *asJSON {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(devs); err != nil {
			fmt.Fprintf(e.stderr, "ftvm rdma devices: %v\n", err)
			return exitFailure
		}
	} else {
		if verbs.Supported {
			fmt.Fprintln(e.stdout, "this ftvm has RDMA verbs support")
		} else {
			fmt.Fprintln(e.stdout, "this ftvm was built without RDMA support (rebuild with cgo and -tags ftvm_rdma): devices are listed, but --transport rdma cannot use them")
		}
		for _, d := range devs {
			fmt.Fprintf(e.stdout, "%s\n", d.Name)
			for _, p := range d.Ports {
				fmt.Fprintf(e.stdout, "  port %d  %s  %s\n", p.Num, p.State, p.LinkLayer)
				for _, g := range p.GIDs {
					fmt.Fprintf(e.stdout, "    gid %-3d %-40v %-10s %s\n", g.Index, g.GID, g.Type, g.Netdev)
				}
			}
		}
	}
	code := exitOK
	if len(devs) == 0 {
		fmt.Fprintln(e.stderr, "ftvm rdma devices: no RDMA device (/sys/class/infiniband is empty or missing): this host has no RDMA NIC, or its kernel has no RDMA (CONFIG_INFINIBAND); with soft-RoCE (rdma_rxe) add one: rdma link add rxe0 type rxe netdev NETDEV")
		code = exitFailure
	}
	if peerAddr.IsValid() {
		dev, why, ok := verbs.Available(peerAddr)
		if ok {
			fmt.Fprintf(e.stdout, "peer %v: over RDMA with %s: %s\n", peerAddr, dev, why)
		} else {
			fmt.Fprintf(e.stdout, "peer %v: not over RDMA: %s\n", peerAddr, why)
			code = exitFailure
		}
	}
	return code
}
