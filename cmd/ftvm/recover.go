package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/ftvm/ftvm/lockstep/arbiter"
)

func init() {
	commands.add(&command{
		name:    "recover",
		summary: "after both hosts stopped, make this host's disk the one the VM restarts from when the arbiter's record and the disks disagree",
		run:     runRecover,
	})
}

const recoverUsage = `usage: ftvm recover --arbiter-dir DIR --disk DISK [--vm-id ID] [--host-name NAME] [--force] [--dry-run]

A cold restart normally needs no command: ftvm primary on the host whose
disk is current (its side file DISK.ftvm-state says it was primary in the
newest epoch the arbiter granted, format in cmd/ftvm/diskstate.go) takes
the next epoch by itself, and a host whose disk is behind refuses and
names the host with the newer disk.

ftvm recover is for when that is not enough: the host with the newer disk
is lost, or the arbiter's record and the disks disagree (a state directory
restored from backup, a disk copied by hand). It prints the arbiter's
record and this disk's state, then declares this host's disk the current
one: it releases the newest epoch in the arbiter's record to this host
(--host-name) and records in DISK.ftvm-state that the disk is current to
it, so that ftvm primary on this host takes the next epoch. Writes the
other host acknowledged after this disk's position are lost: run it on the
host whose disk is the newest left (the highest epoch, then the highest
seq, in its side file).

It refuses while any daemon of the VM runs on a host sharing DIR, and for
a disk a checkpoint was half written over (role "joining") unless --force.

Exit codes: 0 done (or --dry-run), 1 refused or failed, 2 usage error.

flags:
`

func runRecover(e *env, args []string) int {
	fs := flag.NewFlagSet("ftvm recover", flag.ContinueOnError)
	dir := fs.String("arbiter-dir", "", "the daemons' --arbiter-dir; required")
	disk := fs.String("disk", "", "this host's --disk, the one to restart from; required")
	vmID := fs.String("vm-id", defaultVMID, "the VM to recover")
	host := fs.String("host-name", "", "this host's --host-name (default: the host name)")
	force := fs.Bool("force", false, "accept a disk a checkpoint was half written over, or one with no state file")
	dryRun := fs.Bool("dry-run", false, "print the record and the disk's state, change nothing")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), recoverUsage)
		fs.PrintDefaults()
	}
	if done, code := parseFlags(e, fs, args); done {
		return code
	}
	if *dir == "" || *disk == "" {
		fmt.Fprintln(e.stderr, "ftvm recover: --arbiter-dir and --disk are required: the arbiter's directory and the disk to restart from")
		return exitUsage
	}
	if *host == "" {
		h, err := os.Hostname()
		if err != nil {
			fmt.Fprintf(e.stderr, "ftvm recover: --host-name not given and the host name is unknown: %v\n", err)
			return exitUsage
		}
		*host = h
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(e.stderr, "ftvm recover: "+format+"\n", a...)
		return exitFailure
	}
	arb, err := arbiter.NewFile(*dir)
	if err != nil {
		return fail("%v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), arbiterReadTimeout)
	defer cancel()
	st, err := arb.State(ctx, *vmID)
	if err != nil {
		return fail("%v", err)
	}
	ds, ok, err := readDiskState(*disk)
	if err != nil {
		return fail("%v", err)
	}
	if _, err := os.Stat(*disk); err != nil {
		return fail("--disk: %v", err)
	}
	printArbiterState(e.stdout, *vmID, arb.Path(*vmID), st)
	if ok {
		fmt.Fprintf(e.stdout, "disk %s (host %s, written %s): %s\n", *disk, ds.Host, ds.Written, ds)
	} else {
		fmt.Fprintf(e.stdout, "disk %s: no state file %s\n", *disk, diskStatePath(*disk))
	}
	switch {
	case ok && ds.VMID != *vmID:
		return fail("the disk belongs to VM %q, not %q", ds.VMID, *vmID)
	case !ok && !*force:
		return fail("the disk has no state file: nothing shows it holds the VM's writes; give --force if you know it does")
	case ok && ds.Role == diskRoleJoining && !*force:
		return fail("a checkpoint was half written over this disk: it is not a consistent copy; use another host's disk, or --force to take it as it is")
	}
	if *dryRun {
		fmt.Fprintln(e.stdout, "dry run: nothing changed")
		return exitOK
	}
	if _, err := arb.Adopt(ctx, *vmID, *host); errors.Is(err, arbiter.ErrRunning) {
		return fail("refused: %v", err)
	} else if err != nil {
		return fail("%v", err)
	}
	next := diskState{VMID: *vmID, Host: *host, Epoch: st.Epoch, Role: diskRolePrimary, Seq: ds.Seq}
	if err := writeDiskState(*disk, next); err != nil {
		return fail("%v", err)
	}
	fmt.Fprintf(e.stdout, "recovered: start ftvm primary on host %s with --disk %s (it takes epoch %d), then the other host as its secondary\n", *host, *disk, st.Epoch+1)
	return exitOK
}
