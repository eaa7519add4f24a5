package kvclient

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ftvm/ftvm/bench/linearize"
	"github.com/ftvm/ftvm/internal/term"
)

// Exit statuses of Command.
const (
	ExitOK                 = 0
	ExitNotLinearizable    = 1
	ExitUsage              = 2
	ExitRunFailed          = 3
	commandDurationDefault = 10 * time.Second
)

// Command is the load generator as a command line tool, for cmd/ftvm to
// wire as a subcommand (e.g. `ftvm kvload -addr 10.0.0.2:7000`). It runs
// a load, prints a progress line to stderr while it runs and the totals to
// stdout, optionally writes the history as JSON Lines, and checks it with
// bench/linearize. It returns the process exit status: 0 done (and
// linearizable), 1 not linearizable, 2 usage error, 3 the run failed.
func Command(ctx context.Context, name string, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg Config
	fs.StringVar(&cfg.Addr, "addr", "", "kvstore address, host:port (required)")
	fs.Float64Var(&cfg.RatePerSec, "rate", 1000, "requests started per second; 0 keeps -concurrency requests outstanding")
	fs.IntVar(&cfg.Concurrency, "concurrency", DefaultConcurrency, "outstanding requests at most")
	fs.DurationVar(&cfg.Duration, "duration", commandDurationDefault, "how long to start requests")
	fs.IntVar(&cfg.RegisterKeys, "keys", DefaultRegisterKeys, "register keys (PUT, GET)")
	fs.IntVar(&cfg.CounterKeys, "counters", DefaultCounterKeys, "counter keys (INC, GET)")
	mix := fs.String("mix", fmt.Sprintf("%d:%d:%d", DefaultMix.Put, DefaultMix.Get, DefaultMix.Inc), "weights PUT:GET:INC")
	fs.DurationVar(&cfg.Retry.AttemptTimeout, "attempt-timeout", DefaultAttemptTimeout, "wait for a reply before resending (same id)")
	fs.IntVar(&cfg.Retry.AttemptsMax, "attempts", DefaultAttemptsMax, "sends of one request at most")
	fs.Uint64Var(&cfg.Seed, "seed", 0, "operation sequence seed (0: random)")
	fs.StringVar(&cfg.KeyPrefix, "key-prefix", "", "start of every key name (default random, so keys are fresh)")
	historyPath := fs.String("history", "", "write the history to this file as JSON Lines")
	check := fs.Bool("check", true, "check the history for linearizability")
	quiet := fs.Bool("quiet", false, "no progress line")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `usage: %s -addr HOST:PORT [flags]

Sends a steady mix of PUT, GET and INC requests to a kvstore guest over UDP,
resending a request with the same id when no reply comes, and records every
operation. It prints a progress line while it runs, then the totals (served,
unanswered, latency percentiles, and the largest gap between replies, which
is the failover time when the service moved), and checks the history for
linearizability (bench/linearize).

Exit codes: 0 done and linearizable, 1 not linearizable, 2 usage error,
3 the run failed.

flags:
`, name)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return ExitUsage
	}
	usage := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "%s: %s\n", name, fmt.Sprintf(format, a...))
		fmt.Fprintf(stderr, "run '%s -h' for the flags\n", name)
		return ExitUsage
	}
	if fs.NArg() > 0 {
		return usage("unexpected argument %q", fs.Arg(0))
	}
	parts := strings.Split(*mix, ":")
	if len(parts) != 3 {
		return usage("-mix %q: want three weights PUT:GET:INC, e.g. 4:4:2", *mix)
	}
	for i, p := range parts {
		w, err := strconv.Atoi(p)
		if err != nil {
			return usage("-mix %q: weight %q is not a number", *mix, p)
		}
		*[]*int{&cfg.Mix.Put, &cfg.Mix.Get, &cfg.Mix.Inc}[i] = w
	}
	if cfg.Mix == (Mix{}) {
		return usage("-mix %q: all weights are 0", *mix)
	}
	if cfg.RegisterKeys == 0 && cfg.CounterKeys == 0 {
		return usage("-keys and -counters are both 0")
	}
	if !*quiet {
		// Redrawn in place on a terminal; elsewhere (a file, a pipe) a
		// plain line a second and the last one, with no escape codes.
		tty := term.IsTerminal(stderr)
		var last time.Time
		cfg.Progress = func(p Progress) {
			switch {
			case tty && p.Done:
				fmt.Fprintf(stderr, "\r%s\x1b[K\n", p.Line())
			case tty:
				fmt.Fprintf(stderr, "\r%s\x1b[K", p.Line())
			case p.Done || time.Since(last) >= time.Second:
				last = time.Now()
				fmt.Fprintln(stderr, p.Line())
			}
		}
	}
	res, err := Run(ctx, cfg)
	if err != nil {
		var ce *ConfigError
		if errors.As(err, &ce) {
			return usage("%v", err)
		}
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return ExitRunFailed
	}
	fmt.Fprintln(stdout, res.Stats.String())
	if *historyPath != "" {
		if err := writeHistory(*historyPath, res.History); err != nil {
			fmt.Fprintf(stderr, "%s: %v\n", name, err)
			return ExitRunFailed
		}
		fmt.Fprintf(stdout, "history: %d operations in %s\n", len(res.History), *historyPath)
	}
	if !*check {
		return ExitOK
	}
	if err := linearize.Check(res.History); err != nil {
		fmt.Fprintf(stdout, "NOT LINEARIZABLE: %v\n", err)
		if linearize.AsViolations(err) != nil {
			return ExitNotLinearizable
		}
		return ExitRunFailed
	}
	fmt.Fprintln(stdout, "linearizable: yes")
	return ExitOK
}

func writeHistory(path string, h []linearize.Op) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("history file: %w", err)
	}
	err = linearize.WriteJSONL(f, h)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("history file %s: %w", path, err)
	}
	return nil
}
