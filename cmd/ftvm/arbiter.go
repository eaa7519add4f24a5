package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/ftvm/ftvm/lockstep/arbiter"
	etcdarb "github.com/ftvm/ftvm/lockstep/arbiter/etcd"
)

func init() {
	commands.add(&command{
		name:    "arbiter",
		summary: "show or reset the arbiter's record of a VM (who holds its newest epoch, and whether it stopped cleanly)",
		run:     runArbiter,
	})
}

const arbiterUsage = `usage: ftvm arbiter status|reset --arbiter-dir DIR [--vm-id ID]
       ftvm arbiter status|reset --arbiter etcd --etcd-endpoints URLS [etcd TLS flags] [--vm-id ID]

The arbiter's state file, DIR/ID.arbiter (format: lockstep/arbiter/file.go),
records the newest epoch granted for the VM, its fence token, the host it
was granted to (--host-name of that daemon) and whether that host stopped
cleanly. A primary that stopped by SIGINT/SIGTERM records a clean stop and
may start again as primary by itself; so may the holder after a crash,
when its disk's side file (DISK.ftvm-state) says it was primary in that
epoch. Any other host is refused as primary (exit 3) and told which host
has the newer disk, so that no second primary and no stale disk can take
over unnoticed; ftvm recover --help is for when that host is lost.

  status  print the record, and whether a daemon of the VM is running on a
          host that shares DIR.
  reset   mark the newest epoch released and clear its holder, so that the
          next ftvm primary, on any host, takes the next epoch by itself.
          Epochs and fences keep growing: no old fence is handed out again.
          It refuses (exit 1) while any daemon of the VM runs on a host that
          shares DIR: each daemon holds a lock on DIR/ID.running for its
          life, which the kernel drops when the process dies. Run it only
          when every daemon of the VM is stopped, and start the new primary
          on the host whose disk is the newest (README: Restarting after
          both hosts stopped).

With --arbiter etcd the record is the VM's keys in etcd (layout:
lockstep/arbiter/etcd), and a running daemon is one whose running/ key
exists (it goes a lease's TTL after the daemon dies).

Exit codes: 0 ok, 1 failure (reset refused), 2 usage error.

flags:
`

func runArbiter(e *env, args []string) int {
	fs := flag.NewFlagSet("ftvm arbiter", flag.ContinueOnError)
	var c daemonConfig
	fs.StringVar(&c.arbiterDir, "arbiter-dir", "", "the daemons' --arbiter-dir; required with --arbiter file")
	checkArbiter := arbiterFlags(fs, &c)
	vmID := fs.String("vm-id", defaultVMID, "the VM whose record to show or reset")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), arbiterUsage)
		fs.PrintDefaults()
	}
	if done, code := subcommandHelp(e, fs, args); done {
		return code
	}
	sub := args[0]
	if done, code := parseFlags(e, fs, args[1:]); done {
		return code
	}
	if sub != "status" && sub != "reset" {
		fmt.Fprintf(e.stderr, "ftvm arbiter: unknown action %q: want status or reset\n", sub)
		return exitUsage
	}
	if err := checkArbiter(); err != nil {
		fmt.Fprintf(e.stderr, "ftvm arbiter: %v\n", err)
		return exitUsage
	}
	arb, closeArb, err := openRecord(&c)
	if err != nil {
		fmt.Fprintf(e.stderr, "ftvm arbiter: %v\n", err)
		return exitFailure
	}
	defer closeArb()
	ctx, cancel := context.WithTimeout(context.Background(), arbiterReadTimeout)
	defer cancel()
	if sub == "status" {
		st, err := arb.State(ctx, *vmID)
		if err != nil {
			fmt.Fprintf(e.stderr, "ftvm arbiter: %v\n", err)
			return exitFailure
		}
		printArbiterState(e.stdout, *vmID, arb.Where(*vmID), st)
		switch running, err := arb.DaemonRunning(ctx, *vmID); {
		case err != nil:
			fmt.Fprintf(e.stdout, "running daemons: unknown: %v\n", err)
		case running:
			fmt.Fprintln(e.stdout, "a daemon of this VM is running (reset refuses)")
		default:
			fmt.Fprintln(e.stdout, "no daemon of this VM runs (on a host sharing the directory, or known to etcd)")
		}
		return exitOK
	}
	old, err := arb.Reset(ctx, *vmID)
	if errors.Is(err, arbiter.ErrRunning) {
		fmt.Fprintf(e.stderr, "ftvm arbiter reset: refused: %v\n", err)
		return exitFailure
	}
	if err != nil {
		fmt.Fprintf(e.stderr, "ftvm arbiter reset: %v\n", err)
		return exitFailure
	}
	fmt.Fprintf(e.stdout, "was: ")
	printArbiterState(e.stdout, *vmID, arb.Where(*vmID), old)
	fmt.Fprintf(e.stdout, "reset: the next ftvm primary of VM %s, on any host, takes epoch %d; start it on the host whose disk is the newest\n", *vmID, old.Epoch+1)
	return exitOK
}

func printArbiterState(w io.Writer, vmID, path string, st arbiter.State) {
	if st.Epoch == 0 {
		fmt.Fprintf(w, "vm %s: no epoch granted yet (%s)\n", vmID, path)
		return
	}
	holder := st.Holder
	if holder == "" {
		holder = "(none)"
	}
	state := "not released: its holder may be primary, or crashed"
	if st.Released {
		state = "released: stopped cleanly or reset"
	}
	fmt.Fprintf(w, "vm %s: epoch %d, fence %d, holder %s, %s (%s)\n", vmID, st.Epoch, st.Fence, holder, state, path)
}

// record is what ftvm arbiter uses of either arbiter.
type record interface {
	State(ctx context.Context, vmID string) (arbiter.State, error)
	Reset(ctx context.Context, vmID string) (arbiter.State, error)
	DaemonRunning(ctx context.Context, vmID string) (bool, error)
	Where(vmID string) string
}

// fileRecord is the file arbiter as a record.
type fileRecord struct{ *arbiter.File }

func (f fileRecord) DaemonRunning(_ context.Context, vmID string) (bool, error) {
	return f.File.DaemonRunning(vmID)
}
func (f fileRecord) Where(vmID string) string { return f.Path(vmID) }

// openRecord opens the arbiter c names, for reading and resetting the
// record outside any daemon.
func openRecord(c *daemonConfig) (record, func(), error) {
	if c.arbiterKind != arbiterKindEtcd {
		f, err := arbiter.NewFile(c.arbiterDir)
		if err != nil {
			return nil, nil, err
		}
		return fileRecord{f}, func() {}, nil
	}
	cli, err := etcdClient(c.etcd)
	if err != nil {
		return nil, nil, err
	}
	// The holder name is never written: status and reset grant nothing.
	a, err := etcdarb.New(etcdarb.Config{Client: cli, Prefix: c.etcd.prefix, Holder: "ftvm-arbiter", LeaseTTL: c.etcd.leaseTTL})
	if err != nil {
		cli.Close()
		return nil, nil, err
	}
	return a, func() { a.Close(); cli.Close() }, nil
}
