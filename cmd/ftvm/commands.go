package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
)

// Exit codes of every ftvm command.
const (
	exitOK      = 0 // the command did what was asked
	exitFailure = 1 // it ran, and something failed
	exitUsage   = 2 // it was called wrongly; the usage is printed
)

// env is what a command may touch of the outside world.
type env struct {
	stdout, stderr io.Writer
}

// command is one subcommand. Each lives in its own file and adds itself to
// a registry from init: commands for `ftvm <name>`, or a nested registry
// such as benchSuites for `ftvm bench <name>`.
type command struct {
	name    string
	summary string // one line for the parent's usage listing
	run     func(e *env, args []string) int
}

// registry is a set of commands under one parent (the binary, or a command
// with sub-commands).
type registry struct {
	path     string // how the parent is invoked, e.g. "ftvm bench"
	commands map[string]*command
}

func newRegistry(path string) *registry {
	return &registry{path: path, commands: map[string]*command{}}
}

// add registers c; two commands of one name are a programming error caught
// when the binary starts, so it panics.
func (r *registry) add(c *command) {
	if _, dup := r.commands[c.name]; dup {
		panic(fmt.Sprintf("%s: command %q registered twice", r.path, c.name))
	}
	r.commands[c.name] = c
}

// dispatch runs the command named by args[0] with the rest of args.
func (r *registry) dispatch(e *env, args []string) int {
	if len(args) == 0 {
		r.usage(e.stderr)
		return exitUsage
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		r.usage(e.stdout)
		return exitOK
	}
	c, ok := r.commands[args[0]]
	if !ok {
		fmt.Fprintf(e.stderr, "%s: unknown command %q\n\n", r.path, args[0])
		r.usage(e.stderr)
		return exitUsage
	}
	return c.run(e, args[1:])
}

func (r *registry) usage(w io.Writer) {
	fmt.Fprintf(w, "usage: %s <command> [arguments]\n\ncommands:\n", r.path)
	names := make([]string, 0, len(r.commands))
	for name := range r.commands {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		fmt.Fprintf(w, "  %-12s %s\n", name, r.commands[name].summary)
	}
	fmt.Fprintf(w, "\nRun '%s <command> --help' for its flags.\n", r.path)
	fmt.Fprintf(w, "Exit codes: %d ok, %d failure, %d usage error.\n", exitOK, exitFailure, exitUsage)
}

// parseFlags parses args with fs, whose output goes to e.stderr. It returns
// done=true and the exit code when the command should stop: after --help
// (exitOK) or a bad flag (exitUsage, with the usage printed).
func parseFlags(e *env, fs *flag.FlagSet, args []string) (done bool, code int) {
	fs.SetOutput(e.stderr)
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return true, exitOK
	case err != nil:
		return true, exitUsage
	case fs.NArg() > 0:
		fmt.Fprintf(e.stderr, "unexpected arguments: %q\n", fs.Args())
		fs.Usage()
		return true, exitUsage
	}
	return false, exitOK
}

// subcommandHelp answers a command of subcommands (ftvm arbiter, ftvm
// cluster) given none, with its usage on stderr and exit 2, or asked for
// help, with its usage on stdout and exit 0; otherwise it does nothing.
func subcommandHelp(e *env, fs *flag.FlagSet, args []string) (done bool, code int) {
	switch {
	case len(args) == 0:
		fs.SetOutput(e.stderr)
		fs.Usage()
		return true, exitUsage
	case args[0] == "-h" || args[0] == "--help" || args[0] == "-help":
		fs.SetOutput(e.stdout)
		fs.Usage()
		return true, exitOK
	}
	return false, 0
}
