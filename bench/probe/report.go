package probe

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"
)

// StageReport summarises one stage's histogram (microseconds).
type StageReport struct {
	Stage string  `json:"stage"`
	Name  string  `json:"name"`
	Count int64   `json:"count"`
	P50   float64 `json:"p50_us"`
	P90   float64 `json:"p90_us"`
	P99   float64 `json:"p99_us"`
	P999  float64 `json:"p999_us"`
	Max   float64 `json:"max_us"`
}

// Report is a snapshot in the form `ftvm probe --json` prints. Fields are
// added, never renamed.
type Report struct {
	PID      int               `json:"pid"`
	PeerPID  int               `json:"peer_pid,omitempty"`
	Seconds  float64           `json:"seconds"`
	Stages   []StageReport     `json:"stages"`
	Counters map[string]uint64 `json:"counters"`
}

func us(ns int64) float64 { return float64(ns) / 1e3 }

// Report summarises s, taken over elapsed, for the daemons of cfg.
func (s *Snapshot) Report(cfg Config, elapsed time.Duration) Report {
	r := Report{PID: cfg.PID, PeerPID: cfg.PeerPID, Seconds: elapsed.Seconds(), Counters: map[string]uint64{}}
	for st := Stage(0); st < StageCount; st++ {
		h := s.Stages[st]
		r.Stages = append(r.Stages, StageReport{
			Stage: st.Key(), Name: st.String(), Count: h.TotalCount(),
			P50: us(h.ValueAtQuantile(50)), P90: us(h.ValueAtQuantile(90)), P99: us(h.ValueAtQuantile(99)),
			P999: us(h.ValueAtQuantile(99.9)), Max: us(h.Max()),
		})
	}
	for c := Counter(0); c < CounterCount; c++ {
		r.Counters[c.Key()] = s.Counters[c]
	}
	return r
}

// WriteTable prints r as the table of ftvm probe: one row a stage that
// saw anything, percentiles in microseconds.
func (r Report) WriteTable(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "stage\tcount\tp50 µs\tp90 µs\tp99 µs\tp99.9 µs\tmax µs\t\n")
	for _, s := range r.Stages {
		if s.Count == 0 {
			continue
		}
		fmt.Fprintf(tw, "%s\t%d\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t\n", s.Name, s.Count, s.P50, s.P90, s.P99, s.P999, s.Max)
	}
	tw.Flush()
	c := r.Counters
	fmt.Fprintf(w, "over %.1fs: %d exits, %d outputs held, %d released (%d of them seen held, %d at once), %d acks, %d TAP writes (%d matched to a release)\n",
		r.Seconds, c["exits"], c["held"], c["released"], c["matched"], c["released_at_once"], c["acks"], c["tap_writes"], c["tap_matched"])
}
