package ft

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/ftvm/ftvm/bench/e2e"
	"github.com/ftvm/ftvm/bench/kvclient"
	"github.com/ftvm/ftvm/bench/linearize"
)

// row turns a cell's two snapshots, its load and its daemons' logs into
// its row of the table (the ratio comes later, from the whole run).
func (c *cell) row(before, after *snap, load *kvclient.Result, primary, secondary *e2e.Daemon) (*Row, error) {
	win := after.at.Sub(before.at)
	r := &Row{Workload: c.w.Name, Setup: c.s, WindowS: win.Seconds(), Unit: c.w.Unit, PerOp: c.w.PerOp,
		Target: c.w.Target, LoadAverage: before.loadAvg}
	if load != nil {
		r.OfferedRate = c.w.Load.RatePerSec
		hist, ops := windowLatency(load, before.at, after.at)
		r.Ops = ops
		l := latencyOf(hist)
		r.Client = &l
		r.clientHist = hist
	} else {
		r.Ops = after.progress - before.progress
	}
	r.Throughput = float64(r.Ops) / win.Seconds()
	hold, err := e2e.HistogramSince(before.hold, after.hold)
	if err != nil {
		return nil, fmt.Errorf("hold latency: %w", err)
	}
	r.Hold, r.holdHist = latencyOf(hold), hold
	r.LogBytes = after.primary.Transport.BytesSent - before.primary.Transport.BytesSent
	r.LogMbitPerSec = float64(r.LogBytes) * 8 / 1e6 / win.Seconds()
	if r.Ops > 0 {
		r.LogBytesPerOp = float64(r.LogBytes) / float64(r.Ops)
		ops := float64(r.Ops)
		r.FramesPerOpPrimary = float64(after.primary.Transport.FramesSent-before.primary.Transport.FramesSent) / ops
		r.WritesPerOpPrimary = float64(after.primary.Transport.Writes-before.primary.Transport.Writes) / ops
		if before.threadsP != nil && after.threadsP != nil {
			r.WakeupsPerOpPrimary = float64(slicesBetween(before.threadsP, after.threadsP)) / ops
		}
		if secondary != nil {
			r.FramesPerOpSecondary = float64(after.secondary.Transport.FramesSent-before.secondary.Transport.FramesSent) / ops
			r.WritesPerOpSecondary = float64(after.secondary.Transport.Writes-before.secondary.Transport.Writes) / ops
			if before.threadsS != nil && after.threadsS != nil {
				r.WakeupsPerOpSecondary = float64(slicesBetween(before.threadsS, after.threadsS)) / ops
			}
		}
	}
	r.Stalls = after.primary.Stats.Stalls - before.primary.Stats.Stalls
	r.CPUPrimary = 100 * (after.cpuP - before.cpuP) / win.Seconds()
	r.CPUClient = 100 * (after.cpuClient - before.cpuClient) / win.Seconds()
	r.Sched = schedOf(before, after, win.Nanoseconds())
	if secondary != nil {
		r.CPUSecondary = 100 * (after.cpuS - before.cpuS) / win.Seconds()
		r.Resyncs = after.secondary.Stats.Restores - before.secondary.Stats.Restores
		r.ResyncsPerSec = float64(r.Resyncs) / win.Seconds()
		if r.Resyncs > 0 {
			pauses, err := resyncPauses(primary.Proc.StderrPath(), secondary.Proc.StderrPath(), before.at, after.at)
			if err != nil {
				return nil, err
			}
			if pauses.TotalCount() > 0 {
				l := latencyOf(pauses)
				r.ResyncPause = &l
			}
		}
	}
	return r, nil
}

// windowLatency is the client latency (ns) of the requests that began and
// were answered inside [from, to], and how many requests were answered in
// it.
func windowLatency(res *kvclient.Result, from, to time.Time) (*hdrhistogram.Histogram, uint64) {
	lo, hi := from.Sub(res.Origin).Nanoseconds(), to.Sub(res.Origin).Nanoseconds()
	h := newHist()
	var answered uint64
	for _, op := range res.History {
		if op.Outcome == linearize.Unknown || op.Complete < lo || op.Complete > hi {
			continue
		}
		answered++
		if op.Invoke >= lo {
			h.RecordValue(max(op.Complete-op.Invoke, 1_000))
		}
	}
	return h, answered
}

func newHist() *hdrhistogram.Histogram { return hdrhistogram.New(1_000, 60_000_000_000, 3) }

// latencyOf renders a histogram of nanoseconds in microseconds.
func latencyOf(h *hdrhistogram.Histogram) Latency {
	us := func(v int64) float64 { return float64(v) / 1e3 }
	return Latency{Count: h.TotalCount(), P50: us(h.ValueAtQuantile(50)), P99: us(h.ValueAtQuantile(99)),
		P999: us(h.ValueAtQuantile(99.9)), Max: us(h.Max())}
}

// consoleTailBytes is how much of the end of a console guestProgress reads.
const consoleTailBytes = 4096

// guestProgress is the guest's own count: the number in the last line of
// the primary's released console that matches the workload's
// ProgressLine.
func (c *cell) guestProgress(d *e2e.Daemon) (uint64, error) {
	re := c.progressLine
	f, err := os.Open(d.Console)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	off := max(fi.Size()-consoleTailBytes, 0)
	tail, err := io.ReadAll(io.NewSectionReader(f, off, fi.Size()-off))
	if err != nil {
		return 0, err
	}
	lines := strings.Split(string(tail), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if m := re.FindStringSubmatch(lines[i]); m != nil {
			if i == len(lines)-1 {
				continue // not ended yet: it may be cut short
			}
			return strconv.ParseUint(m[1], 10, 64)
		}
	}
	if fi.Size() == 0 {
		return 0, nil
	}
	return 0, fmt.Errorf("no line of %s matches %q in its last %d bytes", d.Console, c.w.ProgressLine, consoleTailBytes)
}

// cpuSeconds is a process's user and system time so far, from
// /proc/PID/stat (all its threads).
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no ')' in %q", pid, b)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: utime %q stime %q", pid, f[11], f[12])
	}
	return float64(ut+st) / clockTicksPerSec, nil
}

// clockTicksPerSec is USER_HZ, the unit of /proc/PID/stat's times: 100 on
// every Linux architecture Go runs on.
const clockTicksPerSec = 100

// LoadAverage returns the 1, 5 and 15 minute load averages
// (/proc/loadavg), or "unknown": reports print it beside their figures.
func LoadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// logLine is what resyncPauses reads of a daemon's JSON log line.
type logLine struct {
	Time time.Time `json:"time"`
	Msg  string    `json:"msg"`
	ID   uint64    `json:"id"`
}

// The daemons' log messages that bound a resync (agent/checkpoints.go).
const (
	msgCheckpointTaken    = "checkpoint taken for the secondary"
	msgCheckpointRestored = "checkpoint restored"
)

// resyncPauses pairs the primary's "checkpoint taken" lines with the
// secondary's "checkpoint restored" lines of the same checkpoint id, for
// checkpoints taken inside [from, to], and returns the time between the
// two (ns).
func resyncPauses(primaryLog, secondaryLog string, from, to time.Time) (*hdrhistogram.Histogram, error) {
	taken, err := logTimes(primaryLog, msgCheckpointTaken)
	if err != nil {
		return nil, err
	}
	restored, err := logTimes(secondaryLog, msgCheckpointRestored)
	if err != nil {
		return nil, err
	}
	h := newHist()
	ids := make([]uint64, 0, len(taken))
	for id := range taken {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	for _, id := range ids {
		t0 := taken[id]
		t1, ok := restored[id]
		if !ok || t0.Before(from) || t0.After(to) {
			continue
		}
		h.RecordValue(max(t1.Sub(t0).Nanoseconds(), 1_000))
	}
	return h, nil
}

// logTimes maps checkpoint id to the time of the log line msg about it.
func logTimes(path, msg string) (map[uint64]time.Time, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[uint64]time.Time{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	needle := []byte(`"msg":"` + msg + `"`)
	for sc.Scan() {
		if !bytes.Contains(sc.Bytes(), needle) {
			continue
		}
		var l logLine
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == msg {
			out[l.ID] = l.Time
		}
	}
	return out, sc.Err()
}
