package tcpbench

import (
	"fmt"
	"io"
	"runtime"
	"time"
)

// ReportOptions size a Report run. Zero fields take the defaults, which
// finish in a few seconds on a 2-core machine.
type ReportOptions struct {
	RTTSamples int // per pinger; default 20000
	RTTRound   int // samples per pinger per interleaved round; default 1000
	RTTWarmup  int // default 2000
	Entries    int // 64-byte entries for the entry throughput; default 2_000_000
	Chunks     int // 1 MiB chunks for the chunk throughput; default 500
	Options    Options
	SkipTLS    bool // leave out ftvm-tls (no temporary certificate files)
	BusyPoll   bool // add the spinning pingers (they hold a processor each)
}

// Targets the transport is held to (ratios measured in the same run).
const (
	TargetFtvmP50OverBare    = 1.15
	TargetFtvmP99OverBare    = 1.3
	TargetFtvmTLSP50OverBare = 1.3
	TargetGRPCOverFtvmP50    = 3.0
	TargetEntriesPerSec      = 2e6
	TargetChunkMBPerSec      = 1000
)

// Report runs the latency comparison and both throughput measurements and
// writes a human-readable report to w: the body of `ftvm bench transport`.
func Report(w io.Writer, o ReportOptions) error {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&o.RTTSamples, 20000)
	def(&o.RTTRound, 1000)
	def(&o.RTTWarmup, 2000)
	def(&o.Entries, 2_000_000)
	def(&o.Chunks, 500)

	fmt.Fprintf(w, "transport benchmark: %s/%s, %d CPUs, GOMAXPROCS %d, %s\n", runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.GOMAXPROCS(0), time.Now().UTC().Format(time.RFC3339))
	fmt.Fprintf(w, "round trip of a %d-byte log entry to its acknowledgement over loopback, %d samples each, interleaved in rounds of %d\n",
		max(o.Options.MessageBytes, DefaultMessageBytes), o.RTTSamples, o.RTTRound)
	kinds := make([]string, 0, len(Kinds)+len(BusyPollKinds))
	for _, k := range Kinds {
		if !(o.SkipTLS && k == KindFtvmTLS) {
			kinds = append(kinds, k)
		}
	}
	if o.BusyPoll {
		kinds = append(kinds, BusyPollKinds...)
	}
	rs, err := CompareRTTKinds(kinds, o.RTTSamples, o.RTTRound, o.RTTWarmup, o.Options)
	if err != nil {
		return err
	}
	fmt.Fprint(w, FormatResults(rs))
	byKind := map[string]Result{}
	for _, r := range rs {
		byKind[r.Kind] = r
	}
	check := func(what string, got, target float64, lessIsBetter bool) {
		ok := got <= target
		if !lessIsBetter {
			ok = got >= target
		}
		verdict := "meets"
		if !ok {
			verdict = "MISSES"
		}
		cmp := "≤"
		if !lessIsBetter {
			cmp = "≥"
		}
		fmt.Fprintf(w, "  %-34s %7.2f  %s target %s %.2f\n", what, got, verdict, cmp, target)
	}
	check("ftvm p50 / bare p50", byKind[KindFtvm].RatioToBare50, TargetFtvmP50OverBare, true)
	check("ftvm p99 / bare p99", byKind[KindFtvm].RatioToBare99, TargetFtvmP99OverBare, true)
	if r, ok := byKind[KindFtvmTLS]; ok {
		check("ftvm-tls p50 / bare p50", r.RatioToBare50, TargetFtvmTLSP50OverBare, true)
	}
	check("grpc p50 / ftvm p50", byKind[KindFtvm].SpeedupOverGRPC50, TargetGRPCOverFtvmP50, false)
	if r, ok := byKind[KindFtvmBusyPoll]; ok {
		check("grpc p50 / ftvm-busypoll p50", r.SpeedupOverGRPC50, TargetGRPCOverFtvmP50, false)
	}
	fmt.Fprintf(w, "  (grpc p50 / bare p50 = %.2f: no transport over this kernel's TCP can beat bare)\n", byKind[KindGRPC].RatioToBare50)

	link, err := NewLink(false, o.Options)
	if err != nil {
		return err
	}
	defer link.Close()
	ent, err := MeasureEntries(link, o.Entries, 64, DefaultEntriesPerSpan)
	if err != nil {
		return err
	}
	chk, err := MeasureChunks(link, o.Chunks)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "throughput on one connection per lane:\n  %s\n  %s\n", ent, chk)
	check("entries64 entries/s (millions)", ent.ItemsPerSec/1e6, TargetEntriesPerSec/1e6, false)
	check("chunk1M MB/s", chk.PayloadMBPerS, TargetChunkMBPerSec, false)
	return nil
}
