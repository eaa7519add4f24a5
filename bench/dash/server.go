package dash

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

//go:embed web
var webFiles embed.FS

// Defaults of Config.
const (
	DefaultPollInterval = 250 * time.Millisecond
	// DefaultHistoryPoints: two minutes of points at the default interval.
	DefaultHistoryPoints = 480
	// DefaultDistWindow is the span of the latency distribution plot.
	DefaultDistWindow = 10 * time.Second
	// The lag colours, as VMware FT colours its vLockstep interval:
	// green up to LagYellowSeconds, yellow up to LagRedSeconds (the
	// default peer timeout: a secondary this far behind would need that
	// long to catch up after a failover), red beyond.
	DefaultLagYellowSeconds = 0.010
	DefaultLagRedSeconds    = 0.100
	// eventsMax bounds the events kept for a page that opens late.
	eventsMax = 500
	// subscriberFrames bounds the frames queued for one page; a page that
	// falls further behind loses frames, never the server's time.
	subscriberFrames = 16
	// fetchTimeout bounds one host's answer in a poll.
	fetchTimeout = time.Second
)

// Config says what a Server watches.
type Config struct {
	Sources       []Source
	PollInterval  time.Duration // 0: DefaultPollInterval
	HistoryPoints int           // 0: DefaultHistoryPoints
	DistWindow    time.Duration // 0: DefaultDistWindow
	// LagYellowSeconds and LagRedSeconds colour the lag; 0: defaults.
	LagYellowSeconds, LagRedSeconds float64
}

// Frame is what a page receives each poll (JSON, one server-sent event).
type Frame struct {
	Seq  uint64 `json:"seq"`
	TMs  int64  `json:"t_ms"` // unix ms when the poll began
	Pair Point  `json:"pair"`
	// Hosts, in the order of Config.Sources.
	Hosts []HostView `json:"hosts"`
	// Dist is the hold-latency distribution over the last DistWindow.
	Dist []DistBar `json:"dist"`
	// Events are the events since the previous frame; in a page's first
	// frame, every event kept. History likewise is only in a page's
	// first frame: the points before this one.
	Events  []Event `json:"events"`
	History []Point `json:"history,omitempty"`
	// Thresholds of the lag colours, for the page's legend.
	LagYellowSeconds float64 `json:"lag_yellow_s"`
	LagRedSeconds    float64 `json:"lag_red_s"`
}

// Point is the pair's figures at one poll. Percentiles are of the
// outputs released in the poll's interval (N of them; none when N is 0),
// from the difference of successive HDR snapshots.
type Point struct {
	TMs          int64   `json:"t"`
	N            int64   `json:"n"`
	P50          float64 `json:"p50_s"`
	P99          float64 `json:"p99_s"`
	P999         float64 `json:"p999_s"`
	LagSeconds   float64 `json:"lag_s"`
	LagEntries   uint64  `json:"lag_entries"`
	LagColor     string  `json:"lag_color"` // green, yellow, red; "" with no primary
	BandwidthBps float64 `json:"bandwidth_bps"`
	RTTSeconds   float64 `json:"rtt_s"`
	Primary      string  `json:"primary"` // the host serving, "" if none answers as primary
}

// HostView is one host's card on the page.
type HostView struct {
	Name         string  `json:"name"`
	Up           bool    `json:"up"`
	Error        string  `json:"error,omitempty"`
	SampleTMs    int64   `json:"sample_t"`
	BandwidthBps float64 `json:"bandwidth_bps"`
	LagColor     string  `json:"lag_color"`
	// HoldCount is the outputs in the host's hold histogram (its
	// ftvm_output_hold_seconds_count).
	HoldCount int64 `json:"hold_count"`
	// RTTSeconds is the log lane's round trip.
	RTTSeconds float64 `json:"rtt_s"`
	Sample     *Sample `json:"sample,omitempty"` // the latest answer (without its histogram)
}

// DistBar is one bar of the distribution plot: N outputs held between
// the previous bar's bound and LeSeconds.
type DistBar struct {
	LeSeconds float64 `json:"le_s"`
	N         int64   `json:"n"`
}

// Event is a line of the page's timeline.
type Event struct {
	ID   uint64 `json:"id"`
	TMs  int64  `json:"t"`
	Kind string `json:"kind"` // failover, down, up, role, divergence, resync, join, joined, unprotected
	Host string `json:"host"`
	Text string `json:"text"`
}

// Server polls the hosts and serves the page.
type Server struct {
	cfg Config

	mu      sync.Mutex
	seq     uint64
	hosts   []*hostState
	history []Point // newest last, at most HistoryPoints
	events  []Event
	eventID uint64
	last    *Frame
	subs    map[chan []byte]bool
}

type hostState struct {
	src    Source
	last   *Sample // latest answer; nil before the first
	up     bool
	err    string
	window []timedSnap // hold snapshots of the last DistWindow, oldest first
	view   HostView
}

type timedSnap struct {
	t    time.Time
	snap *hdrhistogram.Snapshot
}

// NewServer returns a dashboard over cfg.Sources; Run polls them.
func NewServer(cfg Config) (*Server, error) {
	if len(cfg.Sources) == 0 {
		return nil, errors.New("dash: no hosts to watch")
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = DefaultPollInterval
	}
	if cfg.HistoryPoints <= 0 {
		cfg.HistoryPoints = DefaultHistoryPoints
	}
	if cfg.DistWindow <= 0 {
		cfg.DistWindow = DefaultDistWindow
	}
	if cfg.LagYellowSeconds <= 0 {
		cfg.LagYellowSeconds = DefaultLagYellowSeconds
	}
	if cfg.LagRedSeconds <= 0 {
		cfg.LagRedSeconds = DefaultLagRedSeconds
	}
	if cfg.LagRedSeconds < cfg.LagYellowSeconds {
		return nil, fmt.Errorf("dash: red lag %v s is below yellow %v s", cfg.LagRedSeconds, cfg.LagYellowSeconds)
	}
	s := &Server{cfg: cfg, subs: map[chan []byte]bool{}}
	for _, src := range cfg.Sources {
		s.hosts = append(s.hosts, &hostState{src: src})
	}
	return s, nil
}

// Run polls every PollInterval until ctx ends.
func (s *Server) Run(ctx context.Context) {
	t := time.NewTicker(s.cfg.PollInterval)
	defer t.Stop()
	for {
		s.Poll(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Poll asks every host once, derives a frame and sends it to the pages.
func (s *Server) Poll(ctx context.Context) {
	start := time.Now()
	samples := make([]*Sample, len(s.hosts))
	errs := make([]error, len(s.hosts))
	var wg sync.WaitGroup
	for i, h := range s.hosts {
		wg.Go(func() {
			c, cancel := context.WithTimeout(ctx, fetchTimeout)
			defer cancel()
			samples[i], errs[i] = h.src.Fetch(c)
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		return
	}
	s.mu.Lock()
	frame := s.update(start, samples, errs)
	b, _ := json.Marshal(frame)
	for ch := range s.subs {
		select {
		case ch <- b:
		default: // the page is behind: it loses this frame
		}
	}
	s.mu.Unlock()
}

// update folds one poll into the state and returns its frame. mu held.
func (s *Server) update(start time.Time, samples []*Sample, errs []error) *Frame {
	s.seq++
	f := &Frame{Seq: s.seq, TMs: start.UnixMilli(), LagYellowSeconds: s.cfg.LagYellowSeconds, LagRedSeconds: s.cfg.LagRedSeconds}
	before := len(s.events)
	interval := hdrhistogram.New(1, holdLatencyMaxNs, 3)
	window := hdrhistogram.New(1, holdLatencyMaxNs, 3)
	var primary *hostState
	for i, h := range s.hosts {
		cur, err := samples[i], errs[i]
		if err != nil {
			if h.up {
				s.event(start, "down", h.src.Name, fmt.Sprintf("%s stopped answering (%s)", h.src.Name, shortErr(err)))
			}
			h.up, h.err = false, err.Error()
			h.view = HostView{Name: h.src.Name, Error: h.err}
			if h.last != nil {
				h.view.Sample = h.last
			}
			f.Hosts = append(f.Hosts, h.view)
			continue
		}
		s.diff(start, h, cur)
		bw := 0.0
		if h.last != nil && h.up {
			if dt := cur.Time.Sub(h.last.Time).Seconds(); dt > 0 {
				if d := cur.logLane().SentBytes - h.last.logLane().SentBytes; cur.logLane().SentBytes >= h.last.logLane().SentBytes {
					bw = float64(d) * 8 / dt
				}
			}
			addDiff(interval, h.last.Hold, cur.Hold)
		}
		h.window = append(h.window, timedSnap{cur.Time, cur.Hold})
		for len(h.window) > 1 && cur.Time.Sub(h.window[0].t) > s.cfg.DistWindow {
			h.window = h.window[1:]
		}
		addDiff(window, h.window[0].snap, cur.Hold)
		h.last, h.up, h.err = cur, true, ""
		lite := *cur
		lite.Hold = nil
		h.view = HostView{Name: h.src.Name, Up: true, SampleTMs: cur.Time.UnixMilli(), BandwidthBps: bw,
			LagColor: s.lagColor(cur), HoldCount: holdCount(cur.Hold), RTTSeconds: cur.logLane().RTTSeconds, Sample: &lite}
		f.Hosts = append(f.Hosts, h.view)
		if cur.Role == "primary" && (primary == nil || cur.Epoch > primary.last.Epoch) {
			primary = h
		}
	}
	p := Point{TMs: f.TMs, N: interval.TotalCount()}
	if p.N > 0 {
		p.P50 = float64(interval.ValueAtQuantile(50)) / 1e9
		p.P99 = float64(interval.ValueAtQuantile(99)) / 1e9
		p.P999 = float64(interval.ValueAtQuantile(99.9)) / 1e9
	}
	if primary != nil {
		p.Primary = primary.src.Name
		p.LagSeconds, p.LagEntries = primary.last.LagSeconds, primary.last.LagEntries
		p.LagColor = primary.view.LagColor
		p.BandwidthBps = primary.view.BandwidthBps
		p.RTTSeconds = primary.view.RTTSeconds
	}
	f.Pair = p
	f.Dist = distBars(window)
	f.Events = append([]Event(nil), s.events[before:]...)
	s.history = append(s.history, p)
	if over := len(s.history) - s.cfg.HistoryPoints; over > 0 {
		s.history = append(s.history[:0], s.history[over:]...)
	}
	s.last = f
	return f
}

// diff turns the changes between a host's previous answer and cur into
// events. mu held.
func (s *Server) diff(now time.Time, h *hostState, cur *Sample) {
	name := h.src.Name
	prev := h.last
	if !h.up {
		s.event(now, "up", name, fmt.Sprintf("%s answers: %s, epoch %d", name, cur.Role, cur.Epoch))
	}
	if prev == nil || prev.PID != cur.PID {
		// A daemon seen for the first time: what its counters say
		// happened before, not now; only a take-over is worth a line.
		if cur.Failovers > 0 {
			s.event(now, "failover", name, fmt.Sprintf("%s took over as primary, epoch %d", name, cur.Epoch))
		}
		return
	}
	switch {
	case cur.Failovers > prev.Failovers:
		s.event(now, "failover", name, fmt.Sprintf("FAILOVER: %s took over as primary, epoch %d", name, cur.Epoch))
	case cur.Role != prev.Role:
		s.event(now, "role", name, fmt.Sprintf("%s is now %s (was %s), epoch %d", name, cur.Role, prev.Role, cur.Epoch))
	}
	if n := cur.Divergences - prev.Divergences; cur.Divergences > prev.Divergences {
		s.event(now, "divergence", name, fmt.Sprintf("divergence on %s (%d): the replica left the primary's path", name, n))
	}
	if cur.Role == "secondary" && prev.Synced && cur.CheckpointsRestored > prev.CheckpointsRestored {
		s.event(now, "resync", name, fmt.Sprintf("resync: %s restored a checkpoint", name))
	}
	if cur.Role == "primary" && cur.CheckpointPauses > prev.CheckpointPauses && prev.Protected {
		ms := (cur.CheckpointPauseSeconds - prev.CheckpointPauseSeconds) * 1e3
		s.event(now, "resync", name, fmt.Sprintf("resync: %s paused %.1f ms for a checkpoint", name, ms))
	}
	if cur.Joins > prev.Joins {
		size := ""
		if cur.JoinTotalBytes > 0 {
			size = " (" + mib(cur.JoinTotalBytes) + ")"
		}
		s.event(now, "join", name, fmt.Sprintf("join: %s sends a checkpoint to a new secondary%s", name, size))
	}
	if q := joinQuarter(cur); q > joinQuarter(prev) && q < 4 {
		s.event(now, "join", name, fmt.Sprintf("join: %d%% of %s sent", 25*q, mib(cur.JoinTotalBytes)))
	}
	if cur.Role == "primary" && cur.Protected && !prev.Protected {
		s.event(now, "joined", name, fmt.Sprintf("protected: %s has a secondary in step", name))
	}
	if cur.Role == "primary" && !cur.Protected && prev.Protected {
		s.event(now, "unprotected", name, fmt.Sprintf("UNPROTECTED: %s lost its secondary", name))
	}
}

// joinQuarter is how many quarters of a join's checkpoint are sent, 0
// when none is under way.
func joinQuarter(x *Sample) int64 {
	if !x.Syncing || x.JoinTotalBytes <= 0 {
		return 0
	}
	return 4 * min(x.JoinSentBytes, x.JoinTotalBytes) / x.JoinTotalBytes
}

// shortErr is the end of an error's chain of causes ("connection
// refused"), for a line of the timeline; the host's card has the whole.
func shortErr(err error) string {
	m := err.Error()
	if i := strings.LastIndex(m, ": "); i >= 0 {
		return m[i+2:]
	}
	return m
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// event appends to the timeline. mu held.
func (s *Server) event(t time.Time, kind, host, text string) {
	s.eventID++
	s.events = append(s.events, Event{ID: s.eventID, TMs: t.UnixMilli(), Kind: kind, Host: host, Text: text})
	if over := len(s.events) - eventsMax; over > 0 {
		s.events = append(s.events[:0], s.events[over:]...)
	}
}

func (s *Server) lagColor(x *Sample) string {
	if x.Role != "primary" {
		return ""
	}
	switch {
	case !x.Protected:
		return "red"
	case x.LagSeconds > s.cfg.LagRedSeconds || x.Stalled:
		return "red"
	case x.LagSeconds > s.cfg.LagYellowSeconds:
		return "yellow"
	}
	return "green"
}

// Bounds of the distribution's histograms, as the agent's.
const holdLatencyMaxNs = 60_000_000_000

// addDiff adds after minus before (nil before: after whole) into h. A
// count that went back (another daemon, another geometry) counts after
// whole. Counts may be cut short of their trailing zeros (Sample.Hold).
func addDiff(h *hdrhistogram.Histogram, before, after *hdrhistogram.Snapshot) {
	if after == nil {
		return
	}
	diff := *after
	if before != nil && before.LowestTrackableValue == after.LowestTrackableValue &&
		before.HighestTrackableValue == after.HighestTrackableValue && before.SignificantFigures == after.SignificantFigures &&
		len(before.Counts) <= len(after.Counts) {
		diff.Counts = make([]int64, len(after.Counts))
		for i, c := range after.Counts {
			if i < len(before.Counts) {
				c -= before.Counts[i]
			}
			if c < 0 {
				diff.Counts = after.Counts
				break
			}
			diff.Counts[i] = c
		}
	}
	h.Merge(hdrhistogram.Import(&diff))
}

func holdCount(s *hdrhistogram.Snapshot) int64 {
	if s == nil {
		return 0
	}
	var n int64
	for _, c := range s.Counts {
		n += c
	}
	return n
}

// distBounds are the distribution plot's bar bounds: four a decade from
// 1 µs to 10 s.
var distBounds = func() []float64 {
	var b []float64
	for e := -6; e < 1; e++ {
		for _, m := range []float64{1.78, 3.16, 5.62, 10} {
			b = append(b, m*pow10(e))
		}
	}
	return b
}()

func pow10(e int) float64 {
	v := 1.0
	for ; e < 0; e++ {
		v /= 10
	}
	for ; e > 0; e-- {
		v *= 10
	}
	return v
}

func distBars(h *hdrhistogram.Histogram) []DistBar {
	bars := make([]DistBar, len(distBounds))
	for i, b := range distBounds {
		bars[i].LeSeconds = b
	}
	for _, bar := range h.Distribution() {
		if bar.Count == 0 {
			continue
		}
		v := float64(bar.To) / 1e9
		i := 0
		for i < len(bars)-1 && v > bars[i].LeSeconds {
			i++
		}
		bars[i].N += bar.Count
	}
	return bars
}

// Handler serves the page (/), its script, the frames as server-sent
// events (/events) and the latest frame as JSON (/frame).
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	web, _ := fs.Sub(webFiles, "web")
	mux.Handle("/", http.FileServerFS(web))
	mux.HandleFunc("/events", s.serveEvents)
	mux.HandleFunc("/frame", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		f := s.last
		s.mu.Unlock()
		if f == nil {
			http.Error(w, "no poll has finished yet: ask again in a moment", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(f)
	})
	return mux
}

// first is a new page's first frame: the latest, with every event kept
// and the history before it. mu held.
func (s *Server) first() []byte {
	if s.last == nil {
		return nil
	}
	f := *s.last
	f.Events = append([]Event(nil), s.events...)
	if len(s.history) > 1 {
		f.History = append([]Point(nil), s.history[:len(s.history)-1]...)
	}
	b, _ := json.Marshal(&f)
	return b
}

func (s *Server) serveEvents(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	ch := make(chan []byte, subscriberFrames)
	s.mu.Lock()
	first := s.first()
	s.subs[ch] = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.subs, ch)
		s.mu.Unlock()
	}()
	send := func(b []byte) bool {
		if _, err := fmt.Fprintf(w, "data: %s\n\n", b); err != nil {
			return false
		}
		fl.Flush()
		return true
	}
	// A comment line opens the stream at once, so that the page's
	// EventSource is "open" before the first poll is done.
	if _, err := fmt.Fprint(w, ": ftvm dash\n\n"); err != nil {
		return
	}
	fl.Flush()
	if first != nil && !send(first) {
		return
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case b := <-ch:
			if first == nil {
				// The page missed the history and events before this
				// frame: give them with it.
				s.mu.Lock()
				b = s.first()
				s.mu.Unlock()
				first = b
			}
			if !send(b) {
				return
			}
		}
	}
}

// Listen serves the dashboard on addr until ctx ends.
func Listen(ctx context.Context, addr string, s *Server) (stop func(), bound string, err error) {
	return listen(ctx, addr, s.Handler())
}

func listen(ctx context.Context, addr string, h http.Handler) (func(), string, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, "", fmt.Errorf("listen address %q: %w: %v", addr, err, errNoHost)
	}
	if host == "" {
		return nil, "", fmt.Errorf("listen address %q: %v", addr, errNoHost)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	stopCtx, cancel := context.WithCancel(ctx)
	go func() {
		<-stopCtx.Done()
		srv.Close()
	}()
	return cancel, ln.Addr().String(), nil
}
