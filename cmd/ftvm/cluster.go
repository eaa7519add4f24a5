package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/ftvm/ftvm/cluster"
	etcdarb "github.com/ftvm/ftvm/lockstep/arbiter/etcd"
	"github.com/ftvm/ftvm/lockstep/wire"
)

func init() {
	commands.add(&command{
		name:    "cluster",
		summary: "the pool of hosts on etcd: add or remove a VM, show hosts, VMs, where each runs, and which are unprotected",
		run:     runCluster,
	})
}

const clusterUsage = `usage: ftvm cluster status --etcd-endpoints URLS [--json] [--watch D]
       ftvm cluster add    --etcd-endpoints URLS --vm-id ID --port N -- DAEMON FLAGS...
       ftvm cluster remove --etcd-endpoints URLS --vm-id ID

The pool is a set of hosts that each run ftvm host (ftvm host --help) and
share an etcd cluster. Each VM of the pool runs as a pair: a primary on one
host and a secondary on another, placed by the pool. When a host dies,
every VM it held is protected again on the hosts left: its secondaries
take over where it ran primaries, and new secondaries join by pre-copy.
Keys, values and every transition: the cluster package's doc (cluster/doc.go).

  status  list the live hosts (address, slots, free slots, VMs), every VM
          (its placed primary and secondary, its epoch, its state) and the
          VMs that are unprotected right now (no secondary in step: being
          re-protected, waiting for a free host, or not served at all).
  add     add a VM. --port is the TCP port its daemons listen on for their
          secondary (each VM of the pool its own). The flags after -- are
          given to both of its daemons: --guest, --cmdline, --tap, --mac,
          --mem, --mode, --etcd-lease-ttl and the like (ftvm primary --help);
          the hosts add the flags that depend on the host. The pool places
          it at once on the hosts with the most free slots.
  remove  take a VM out of the pool: its hosts stop its daemons (the
          primary stops cleanly, recording a clean stop with the arbiter).
          Its disks stay on the hosts.

Exit codes: 0 ok, 1 failure, 2 usage error.

flags:
`

// poolFlags declares the flags that reach the pool's etcd; the returned
// function checks them once parsed.
func poolFlags(fs *flag.FlagSet, e *etcdConfig) func() error {
	endpoints := fs.String("etcd-endpoints", "", "the etcd members' client URLs, comma-separated (http://host:2379, or https:// with --etcd-cacert); required")
	fs.StringVar(&e.caFile, "etcd-cacert", "", "CA bundle (PEM) that signed the etcd servers' certificates: the client speaks TLS")
	fs.StringVar(&e.certFile, "etcd-cert", "", "this host's client certificate (PEM), for an etcd that checks client certificates; needs --etcd-key")
	fs.StringVar(&e.keyFile, "etcd-key", "", "the key of --etcd-cert (PEM)")
	fs.StringVar(&e.prefix, "etcd-prefix", etcdarb.DefaultPrefix, "the prefix of ftvm's keys in etcd (the pool's and the arbiter's; layout in cluster/doc.go)")
	fs.DurationVar(&e.dialTimeout, "etcd-dial-timeout", defaultEtcdDialTimeout, "how long to wait for etcd at start")
	return func() error {
		for _, ep := range strings.Split(*endpoints, ",") {
			if ep = strings.TrimSpace(ep); ep != "" {
				e.endpoints = append(e.endpoints, ep)
			}
		}
		if len(e.endpoints) == 0 {
			return errors.New("--etcd-endpoints is required: the client URLs of the pool's etcd members, comma-separated")
		}
		if (e.certFile == "") != (e.keyFile == "") {
			return errors.New("--etcd-cert and --etcd-key go together: give both, or neither")
		}
		if e.dialTimeout <= 0 {
			return fmt.Errorf("--etcd-dial-timeout %v must be positive", e.dialTimeout)
		}
		return nil
	}
}

func runCluster(e *env, args []string) int {
	fs := flag.NewFlagSet("ftvm cluster", flag.ContinueOnError)
	var ec etcdConfig
	checkEtcd := poolFlags(fs, &ec)
	vmID := fs.String("vm-id", "", "add, remove: the VM (1 to 64 letters, digits, '.', '_' or '-')")
	port := fs.Int("port", 0, "add: the TCP port the VM's daemons listen on for their secondary (each VM of the pool its own)")
	asJSON := fs.Bool("json", false, "status: one JSON object (fields: cluster.Report)")
	watch := fs.Duration("watch", 0, "status: print it again every D until interrupted")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), clusterUsage)
		fs.PrintDefaults()
	}
	if done, code := subcommandHelp(e, fs, args); done {
		return code
	}
	sub := args[0]
	rest := args[1:]
	var daemonArgs []string
	if sub == "add" {
		for i, a := range rest {
			if a == "--" {
				rest, daemonArgs = rest[:i], rest[i+1:]
				break
			}
		}
	}
	if done, code := parseFlags(e, fs, rest); done {
		return code
	}
	usageErr := func(err error) int {
		fmt.Fprintf(e.stderr, "ftvm cluster %s: %v\n", sub, err)
		return exitUsage
	}
	if err := checkEtcd(); err != nil {
		return usageErr(err)
	}
	switch sub {
	case "status":
		if *watch < 0 {
			return usageErr(fmt.Errorf("--watch %v must be positive", *watch))
		}
	case "add":
		if err := cluster.CheckName("--vm-id", *vmID); err != nil {
			return usageErr(err)
		}
		if *port <= 0 || *port > 65535 {
			return usageErr(fmt.Errorf("--port %d: give the TCP port (1 to 65535) the VM's daemons listen on", *port))
		}
		if len(daemonArgs) == 0 {
			return usageErr(errors.New("give the daemon flags after --, at least --guest (ftvm primary --help lists them)"))
		}
		if err := checkPoolDaemonArgs(daemonArgs); err != nil {
			return usageErr(err)
		}
	case "remove":
		if err := cluster.CheckName("--vm-id", *vmID); err != nil {
			return usageErr(err)
		}
	default:
		fmt.Fprintf(e.stderr, "ftvm cluster: unknown command %q: want status, add or remove\n", sub)
		return exitUsage
	}
	cli, err := etcdClient(ec)
	if err != nil {
		fmt.Fprintf(e.stderr, "ftvm cluster %s: %v\n", sub, err)
		return exitFailure
	}
	defer cli.Close()
	keys := cluster.Keys{Prefix: ec.prefix}
	ctx, cancel := context.WithTimeout(context.Background(), ec.dialTimeout)
	defer cancel()
	switch sub {
	case "add":
		if err := cluster.AddVM(ctx, cli, keys, *vmID, cluster.VMSpec{Port: *port, Args: daemonArgs}); err != nil {
			fmt.Fprintf(e.stderr, "ftvm cluster add: %v\n", err)
			return exitFailure
		}
		fmt.Fprintf(e.stdout, "VM %s added to the pool; ftvm cluster status shows where it runs\n", *vmID)
		return exitOK
	case "remove":
		found, err := cluster.RemoveVM(ctx, cli, keys, *vmID)
		if err != nil {
			fmt.Fprintf(e.stderr, "ftvm cluster remove: %v\n", err)
			return exitFailure
		}
		if !found {
			fmt.Fprintf(e.stderr, "ftvm cluster remove: VM %s is not in the pool (ftvm cluster status lists them)\n", *vmID)
			return exitFailure
		}
		fmt.Fprintf(e.stdout, "VM %s removed from the pool; its hosts stop its daemons\n", *vmID)
		return exitOK
	}
	for {
		sctx, scancel := context.WithTimeout(context.Background(), ec.dialTimeout)
		r, err := cluster.Status(sctx, cli, keys)
		scancel()
		if err != nil {
			fmt.Fprintf(e.stderr, "ftvm cluster status: %v\n", err)
			return exitFailure
		}
		if *asJSON {
			err = r.WriteJSON(e.stdout)
		} else {
			err = r.WriteText(e.stdout)
		}
		if err != nil {
			return exitFailure
		}
		if *watch == 0 {
			return exitOK
		}
		time.Sleep(*watch)
		fmt.Fprintln(e.stdout)
	}
}

// poolOwnedFlags are the daemon flags a host sets itself: a VM's spec may
// not carry them.
var poolOwnedFlags = []string{"vm-id", "listen", "peer", "peer-name", "allow-peers", "host-name", "tls-dir", "tls-name",
	"psk-file", "arbiter", "arbiter-dir", "etcd-endpoints", "etcd-cacert", "etcd-cert", "etcd-key", "etcd-prefix",
	"disk", "control", "console", "config"}

// checkPoolDaemonArgs refuses daemon flags the hosts set themselves, and
// flags no daemon takes (parsed as ftvm primary would).
func checkPoolDaemonArgs(args []string) error {
	for _, a := range args {
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") {
			continue
		}
		for _, owned := range poolOwnedFlags {
			if name == owned {
				return fmt.Errorf("daemon flag %s is set by each host (ftvm host --help); leave it out", a)
			}
		}
	}
	fs := flag.NewFlagSet("ftvm primary", flag.ContinueOnError)
	fs.SetOutput(discard{})
	daemonFlags(fs, wire.RolePrimary)
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("daemon flags after --: %v (ftvm primary --help lists them)", err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("daemon flags after --: unexpected arguments %q", fs.Args())
	}
	return nil
}

type discard struct{}

func (discard) Write(b []byte) (int, error) { return len(b), nil }
