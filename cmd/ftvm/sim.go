package main

import (
	"flag"
	"fmt"
	"runtime"
	"sync"
	"time"

	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/lockstep/sim"
)

func init() {
	commands.add(&command{
		name:    "sim",
		summary: "run the lockstep protocol under the seeded fault simulator and its checkers",
		run:     runSim,
	})
}

func runSim(e *env, args []string) int {
	fs := flag.NewFlagSet("ftvm sim", flag.ContinueOnError)
	seeds := fs.Int("seeds", 1000, "seeds to run per ack mode")
	first := fs.Uint64("first", 1, "first seed of the range")
	one := fs.Int64("seed", -1, "run only this seed and print its trace (the reproduce form)")
	modeName := fs.String("mode", "both", "ack mode: compare, receipt or both")
	harsh := fs.Bool("harsh", false, "use the harsh fault regime (lossier network, more crashes, tiny log window)")
	workers := fs.Int("workers", runtime.GOMAXPROCS(0), "goroutines the seed range is split across")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `usage: ftvm sim [--seeds N] [--first S] [--mode compare|receipt|both] [--harsh]
       ftvm sim --seed S --mode compare|receipt [--harsh]

Runs the lockstep protocol (package lockstep) between a simulated primary
and secondary under one seed each: a lossy, duplicating, reordering network
with partitions, crashes and restarts, an arbiter, and a guest that may
diverge. Checkers outside the protocol watch every run: no output released
before its ack or compare, one execution seen across failovers, one
releaser per epoch, resync restores the primary's state, and the pair is
protected again after the network heals. A failing seed is printed with the
one-line command that replays it with a full trace.

Exit codes: 0 every seed passed, 1 a checker fired, 2 usage error.

flags:
`)
		fs.PrintDefaults()
	}
	if done, code := parseFlags(e, fs, args); done {
		return code
	}
	var modes []lockstep.Mode
	switch *modeName {
	case "compare":
		modes = []lockstep.Mode{lockstep.AckOnCompare}
	case "receipt":
		modes = []lockstep.Mode{lockstep.AckOnReceipt}
	case "both":
		modes = []lockstep.Mode{lockstep.AckOnCompare, lockstep.AckOnReceipt}
	default:
		fmt.Fprintf(e.stderr, "ftvm sim: --mode %q: want compare, receipt or both\n", *modeName)
		return exitUsage
	}
	if *seeds < 1 || *workers < 1 {
		fmt.Fprintln(e.stderr, "ftvm sim: --seeds and --workers must be at least 1")
		return exitUsage
	}
	options := func(m lockstep.Mode) sim.Options {
		if *harsh {
			return sim.HarshOptions(m)
		}
		return sim.DefaultOptions(m)
	}

	if *one >= 0 {
		if len(modes) != 1 {
			fmt.Fprintln(e.stderr, "ftvm sim: --seed replays one run: give --mode compare or --mode receipt")
			return exitUsage
		}
		o := options(modes[0])
		o.Trace = func(line string) { fmt.Fprintln(e.stdout, line) }
		r := sim.Run(uint64(*one), o)
		fmt.Fprintln(e.stdout, r.String())
		if r.Failed() {
			return exitFailure
		}
		return exitOK
	}

	code := exitOK
	for _, m := range modes {
		start := time.Now()
		sum := runSeedsParallel(*first, *seeds, *workers, options(m))
		elapsed := time.Since(start)
		fmt.Fprintln(e.stdout, sum.String())
		fmt.Fprintf(e.stdout, "  %.0f seeds/s over %d workers (%s)\n", float64(sum.Seeds)/elapsed.Seconds(), *workers, elapsed.Round(time.Millisecond))
		if sum.Failed > 0 {
			code = exitFailure
		}
	}
	return code
}

// runSeedsParallel splits [first, first+count) into one contiguous range per
// worker; every seed is independent, so the merged summary is the same as a
// sequential run's (bar the order of the failures kept).
func runSeedsParallel(first uint64, count, workers int, o sim.Options) sim.Summary {
	workers = min(workers, count)
	parts := make([]sim.Summary, workers)
	var wg sync.WaitGroup
	per, extra := count/workers, count%workers
	next := first
	for w := range workers {
		n := per
		if w < extra {
			n++
		}
		wg.Add(1)
		go func(w int, from uint64, n int) {
			defer wg.Done()
			parts[w] = sim.RunMany(from, n, o)
		}(w, next, n)
		next += uint64(n)
	}
	wg.Wait()
	sum := sim.Summary{Mode: o.Mode, Harsh: o.Harsh}
	for _, p := range parts {
		sum.Merge(p)
	}
	return sum
}
