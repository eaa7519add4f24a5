package dash

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metric describes one metric a daemon exports. Every metric carries the
// label vm (the VM's ID, --vm-id); Labels names the others.
type Metric struct {
	Name   string
	Type   string // counter, gauge, histogram
	Labels string // besides vm
	Help   string
	value  func(*Sample) float64
}

// Roles are the values of ftvm_role's role label: one series each, 1 for
// the daemon's role and 0 for the others.
var Roles = []string{"primary", "secondary", "candidate", "halted"}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Metrics is the table of what a daemon's /metrics serves, in the order
// of the README's table. Names follow Prometheus conventions: the unit in
// the name, counters end in _total.
var Metrics = []Metric{
	{Name: "ftvm_output_hold_seconds", Type: "histogram",
		Help: "How long the primary held each output, from the exit that made it to its release, while a secondary protected it. Native histogram (schema 3) and classic buckets."},
	{Name: "ftvm_secondary_lag_entries", Type: "gauge",
		Help:  "Log entries the primary wrote that the secondary has not acknowledged (0 on a secondary and while unprotected).",
		value: func(s *Sample) float64 { return float64(s.LagEntries) }},
	{Name: "ftvm_secondary_lag_bytes", Type: "gauge",
		Help:  "Log bytes sent since the position the secondary acknowledged (10 ms resolution).",
		value: func(s *Sample) float64 { return float64(s.LagBytes) }},
	{Name: "ftvm_secondary_lag_seconds", Type: "gauge",
		Help:  "How long ago the primary wrote the log position the secondary acknowledged last, 0 when it is the newest: the vLockstep interval (10 ms resolution).",
		value: func(s *Sample) float64 { return s.LagSeconds }},
	{Name: "ftvm_replay_backlog_entries", Type: "gauge",
		Help:  "A secondary's log entries received and not yet replayed.",
		value: func(s *Sample) float64 { return float64(s.ReplayBacklog) }},
	{Name: "ftvm_transport_sent_bytes_total", Type: "counter", Labels: "lane",
		Help: "Bytes the transport sent on a lane, frame headers included; rate() of lane=\"control\" is the log bandwidth."},
	{Name: "ftvm_transport_received_bytes_total", Type: "counter", Labels: "lane",
		Help: "Bytes the transport received on a lane, frame headers included."},
	{Name: "ftvm_transport_rtt_seconds", Type: "gauge", Labels: "lane",
		Help: "The transport's round trip on a lane (tcp: the kernel's smoothed RTT of the connection); 0 while not connected."},
	{Name: "ftvm_transport_info", Type: "gauge", Labels: "transport",
		Help: "The transport the log ships over (tcp; rdma and shm to come): always 1."},
	{Name: "ftvm_held_outputs", Type: "gauge",
		Help:  "Outputs held now, waiting for the secondary.",
		value: func(s *Sample) float64 { return float64(s.HeldOutputs) }},
	{Name: "ftvm_released_outputs_total", Type: "counter",
		Help:  "Outputs handed to their device backends.",
		value: func(s *Sample) float64 { return float64(s.ReleasedOutputs) }},
	{Name: "ftvm_stalls_total", Type: "counter",
		Help:  "Times the primary's vCPU was stalled because the secondary lagged a log window behind.",
		value: func(s *Sample) float64 { return float64(s.Stalls) }},
	{Name: "ftvm_stalled", Type: "gauge",
		Help:  "1 while the primary's vCPU is stalled for a lagging secondary.",
		value: func(s *Sample) float64 { return b2f(s.Stalled) }},
	{Name: "ftvm_divergences_total", Type: "counter",
		Help:  "Times the secondary's replica left the primary's path (each is repaired by a resync).",
		value: func(s *Sample) float64 { return float64(s.Divergences) }},
	{Name: "ftvm_bad_frames_total", Type: "counter",
		Help:  "Frames from the peer refused as corrupt (the transport's checks, or not a protocol message); each dropped its connection, which the peer makes again.",
		value: func(s *Sample) float64 { return float64(s.BadFrames) }},
	{Name: "ftvm_checkpoints_taken_total", Type: "counter",
		Help:  "Checkpoints the primary took for resyncs and joins (each pre-copy part counts).",
		value: func(s *Sample) float64 { return float64(s.CheckpointsTaken) }},
	{Name: "ftvm_checkpoints_restored_total", Type: "counter",
		Help:  "Checkpoints the secondary restored (a resync, or the end of a join).",
		value: func(s *Sample) float64 { return float64(s.CheckpointsRestored) }},
	{Name: "ftvm_checkpoint_pauses_total", Type: "counter",
		Help:  "Times the primary paused its VM for a checkpoint (a resync, or a join's last increment).",
		value: func(s *Sample) float64 { return float64(s.CheckpointPauses) }},
	{Name: "ftvm_checkpoint_pause_seconds_total", Type: "counter",
		Help:  "Time the primary's VM spent paused for checkpoints.",
		value: func(s *Sample) float64 { return s.CheckpointPauseSeconds }},
	{Name: "ftvm_failovers_total", Type: "counter",
		Help:  "Times this daemon took over as primary.",
		value: func(s *Sample) float64 { return float64(s.Failovers) }},
	{Name: "ftvm_joins_total", Type: "counter",
		Help:  "Joins this primary began: checkpoints sent to a joining secondary.",
		value: func(s *Sample) float64 { return float64(s.Joins) }},
	{Name: "ftvm_join_sent_bytes", Type: "gauge",
		Help:  "Bytes of the latest join's checkpoint sent so far.",
		value: func(s *Sample) float64 { return float64(s.JoinSentBytes) }},
	{Name: "ftvm_join_size_bytes", Type: "gauge",
		Help:  "Bytes of the latest join's checkpoint in all (ftvm_join_sent_bytes / this is its progress).",
		value: func(s *Sample) float64 { return float64(s.JoinTotalBytes) }},
	{Name: "ftvm_joining", Type: "gauge",
		Help:  "1 while a checkpoint is on its way to a joining secondary.",
		value: func(s *Sample) float64 { return b2f(s.Syncing) }},
	{Name: "ftvm_role", Type: "gauge", Labels: "role",
		Help: "The daemon's role: 1 for the role it has, 0 for the others (primary, secondary, candidate, halted)."},
	{Name: "ftvm_epoch", Type: "gauge",
		Help:  "The epoch the daemon is in (raised by every take-over and every grant of the arbiter).",
		value: func(s *Sample) float64 { return float64(s.Epoch) }},
	{Name: "ftvm_fence_token", Type: "gauge",
		Help:  "The arbiter's fence token of the epoch.",
		value: func(s *Sample) float64 { return float64(s.Fence) }},
	{Name: "ftvm_protected", Type: "gauge",
		Help:  "1 while the primary has a secondary in step (the VM survives this host's death).",
		value: func(s *Sample) float64 { return b2f(s.Protected) }},
}

// Collector turns a daemon's Sample into metrics at each scrape.
type Collector struct {
	vm      string
	created time.Time
	sample  func(context.Context) (*Sample, error)
	descs   map[string]*prometheus.Desc
}

var _ prometheus.Collector = (*Collector)(nil)

// NewCollector returns a collector for the VM vm whose figures come from
// sample, called once per scrape. created is when the counters started
// (the daemon's start).
func NewCollector(vm string, created time.Time, sample func(context.Context) (*Sample, error)) *Collector {
	c := &Collector{vm: vm, created: created, sample: sample, descs: map[string]*prometheus.Desc{}}
	for _, m := range Metrics {
		var labels []string
		if m.Labels != "" {
			labels = []string{m.Labels}
		}
		c.descs[m.Name] = prometheus.NewDesc(m.Name, m.Help, labels, prometheus.Labels{"vm": vm})
	}
	return c
}

// Describe sends every metric's description.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range Metrics {
		ch <- c.descs[m.Name]
	}
}

// scrapeTimeout bounds the copy of a sample during a scrape.
const scrapeTimeout = 2 * time.Second

// Collect sends the metrics of one fresh sample.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	s, err := c.sample(ctx)
	if err != nil {
		for _, m := range Metrics {
			ch <- prometheus.NewInvalidMetric(c.descs[m.Name], err)
		}
		return
	}
	c.collect(ch, s)
}

func (c *Collector) collect(ch chan<- prometheus.Metric, s *Sample) {
	typ := map[string]prometheus.ValueType{"counter": prometheus.CounterValue, "gauge": prometheus.GaugeValue}
	for _, m := range Metrics {
		d := c.descs[m.Name]
		switch m.Name {
		case "ftvm_output_hold_seconds":
			ch <- newHoldMetric(d, s.Hold, c.created)
		case "ftvm_role":
			for _, r := range Roles {
				ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, b2f(s.Role == r), r)
			}
		case "ftvm_transport_info":
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, 1, s.Transport)
		case "ftvm_transport_sent_bytes_total":
			for _, l := range s.Lanes {
				ch <- prometheus.MustNewConstMetricWithCreatedTimestamp(d, prometheus.CounterValue, float64(l.SentBytes), c.created, l.Name)
			}
		case "ftvm_transport_received_bytes_total":
			for _, l := range s.Lanes {
				ch <- prometheus.MustNewConstMetricWithCreatedTimestamp(d, prometheus.CounterValue, float64(l.ReceivedBytes), c.created, l.Name)
			}
		case "ftvm_transport_rtt_seconds":
			for _, l := range s.Lanes {
				ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, l.RTTSeconds, l.Name)
			}
		default:
			if m.Type == "counter" {
				ch <- prometheus.MustNewConstMetricWithCreatedTimestamp(d, prometheus.CounterValue, m.value(s), c.created)
			} else {
				ch <- prometheus.MustNewConstMetric(d, typ[m.Type], m.value(s))
			}
		}
	}
}

// Handler serves /metrics for the collector, with the Go runtime's and
// the process's metrics beside it. It speaks the text format and, to a
// scraper that asks for it, the protobuf format that carries the native
// histogram.
func Handler(c *Collector) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(c, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// ListenMetrics serves /metrics for c on addr until ctx ends. addr is
// host:port; an empty host is refused so that the endpoint is never
// opened on every interface by mistake (give 0.0.0.0 to mean that).
func ListenMetrics(ctx context.Context, addr string, c *Collector) (stop func(), bound string, err error) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", Handler(c))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintln(w, "ftvm: metrics are at /metrics")
	})
	return listen(ctx, addr, mux)
}

// errNoHost is returned for a listen address without a host.
var errNoHost = errors.New("give a host (127.0.0.1:9100 for this host only, 0.0.0.0:9100 for every interface)")
