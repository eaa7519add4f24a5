package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"runtime/metrics"
	"strings"
	"time"

	"github.com/ftvm/ftvm/agent"
	"github.com/ftvm/ftvm/bench/dash"
	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/tcpfallback"
)

func init() {
	commands.add(&command{
		name:    "status",
		summary: "ask a running ftvm primary or secondary for its role, epoch, log lag and latency",
		run:     runStatus,
	})
}

// The control socket speaks one request per connection: the client sends a
// line naming the request, the daemon answers with one JSON object and
// closes. Requests: "status", answered with statusReport,
// "hold-histogram", answered with the output-hold latency histogram in
// nanoseconds as hdrhistogram.Snapshot's JSON (to merge across hosts),
// and "sample" (dash.SampleRequest), answered with dash.Sample: the
// figures of /metrics and ftvm dash (metrics.go).
const (
	controlRequestStatus    = "status"
	controlRequestHistogram = "hold-histogram"
	controlTimeout          = 2 * time.Second
	controlRequestMax       = 256
)

// statusReport is a daemon's answer to "status" (JSON; durations in
// microseconds). Fields are added, never renamed.
type statusReport struct {
	VMID      string `json:"vm_id"`
	PID       int    `json:"pid"`
	Role      string `json:"role"` // primary, secondary, candidate, halted
	Epoch     uint64 `json:"epoch"`
	Fence     uint64 `json:"fence"`
	Mode      string `json:"mode"`
	Protected bool   `json:"protected"` // primary: a secondary is in step
	Syncing   bool   `json:"syncing"`   // primary: a checkpoint is on its way to a secondary
	Synced    bool   `json:"synced"`    // secondary: replaying from a restored checkpoint
	Stalled   bool   `json:"stalled"`
	LastSeq   uint64 `json:"last_seq"` // primary: last log position; secondary: last received
	Acked     uint64 `json:"acked"`    // primary: acknowledged by the secondary
	LogLag    uint64 `json:"log_lag"`  // primary: entries not yet acknowledged
	LogItems  int    `json:"log_items"`
	Held      int    `json:"held_outputs"`
	Released  uint64 `json:"released_through"`
	// The arbiter could not be asked ArbiterFailures times in a row; the
	// last error. Both are empty while the arbiter answers.
	ArbiterFailures int    `json:"arbiter_failures,omitempty"`
	ArbiterError    string `json:"arbiter_error,omitempty"`

	// Arbiter is the split-brain lock: its kind, where it is, and with
	// etcd the lease this host holds its epoch under and its time left.
	Arbiter arbiterReport `json:"arbiter"`
	// Releases: for each epoch this host released outputs in, the first
	// and last release (RFC 3339, UTC) and how many.
	Releases []releaseSpan `json:"releases,omitempty"`

	// DiskError is set while a block write fails (a full disk): the VM
	// is paused and no output after the write leaves until it succeeds.
	DiskError string `json:"disk_error,omitempty"`

	Stats       agent.Stats    `json:"stats"`
	HoldLatency latencyReport  `json:"hold_latency"`
	Sync        syncReport     `json:"sync"`
	LiveSince   string         `json:"live_since,omitempty"` // a secondary that took over: when
	Uptime      float64        `json:"uptime_s"`
	Peer        transportPeers `json:"transport"`
	// Liveness is what the transports' watchdogs saw (summed over them).
	Liveness livenessReport `json:"liveness"`
	// Transport is what carries the control lane to the peer this host
	// sends to now (shm, rdma or tcp), TransportWhy why.
	Transport    string `json:"transport_in_use"`
	TransportWhy string `json:"transport_why,omitempty"`
}

// livenessReport: the silences the watchdogs counted before they heard the
// peer again and their own gaps between looks, as histograms by
// tcpfallback.LivenessBucketEdges (upper edges in ms; the last bucket is
// above the last edge).
type livenessReport struct {
	Realtime         bool                          `json:"realtime"`
	RealtimeError    string                        `json:"realtime_error,omitempty"`
	BucketEdgesMs    []float64                     `json:"bucket_edges_ms"`
	PeerSilence      tcpfallback.LivenessHistogram `json:"peer_silence"`
	PeerSilenceMaxMs float64                       `json:"peer_silence_max_ms"`
	OwnGap           tcpfallback.LivenessHistogram `json:"own_gap"`
	OwnGapMaxMs      float64                       `json:"own_gap_max_ms"`
	OwnStalls        uint64                        `json:"own_stalls"`
	DeclaredDead     uint64                        `json:"declared_dead"`
	// The Go runtime's stop-the-world pauses since the daemon started:
	// the watchdog threads are Go code, so a pause stops their heartbeats
	// too. GCStopMaxMs is the longest wait for every goroutine to stop (a
	// long one: a thread that would not yield), GCPauseMaxMs the longest
	// whole pause, GCPausesOver10ms how many lasted longer than 10 ms.
	GCStopMaxMs      float64 `json:"gc_stop_max_ms"`
	GCPauseMaxMs     float64 `json:"gc_pause_max_ms"`
	GCPausesOver10ms uint64  `json:"gc_pauses_over_10ms"`
}

// logLiveness logs, as the daemon stops, what its watchdogs saw over its
// life and the Go runtime's longest pauses: a daemon that halted after a
// take-over it did not expect leaves no control socket to ask.
func (d *daemon) logLiveness() {
	var r livenessReport
	for _, tr := range d.transports() {
		r.add(tr.TCP().Liveness())
	}
	r.addRuntimePauses()
	d.log.Info("liveness over this daemon's life", "realtime", r.Realtime, "peer_silence_max_ms", r.PeerSilenceMaxMs,
		"own_gap_max_ms", r.OwnGapMaxMs, "own_stalls", r.OwnStalls, "declared_dead", r.DeclaredDead,
		"gc_stop_max_ms", r.GCStopMaxMs, "gc_pause_max_ms", r.GCPauseMaxMs, "gc_pauses_over_10ms", r.GCPausesOver10ms)
}

// addRuntimePauses fills in the GC fields from runtime/metrics.
func (r *livenessReport) addRuntimePauses() {
	samples := []metrics.Sample{{Name: "/sched/pauses/stopping/gc:seconds"}, {Name: "/sched/pauses/total/gc:seconds"}}
	metrics.Read(samples)
	for i, s := range samples {
		if s.Value.Kind() != metrics.KindFloat64Histogram {
			continue // not in this runtime
		}
		h := s.Value.Float64Histogram()
		longest, over := 0.0, uint64(0)
		for b, n := range h.Counts {
			if n == 0 {
				continue
			}
			longest = h.Buckets[b+1] // the bucket's upper edge
			if h.Buckets[b] >= 0.010 {
				over += n
			}
		}
		if math.IsInf(longest, 1) {
			longest = h.Buckets[len(h.Buckets)-2]
		}
		if i == 0 {
			r.GCStopMaxMs = longest * 1e3
		} else {
			r.GCPauseMaxMs, r.GCPausesOver10ms = longest*1e3, over
		}
	}
}

func (r *livenessReport) add(lv tcpfallback.LivenessStats) {
	if r.BucketEdgesMs == nil {
		for _, e := range tcpfallback.LivenessBucketEdges {
			r.BucketEdgesMs = append(r.BucketEdgesMs, ms(e))
		}
		r.Realtime, r.RealtimeError = lv.Realtime, lv.RealtimeError
	}
	r.Realtime = r.Realtime && lv.Realtime
	if lv.RealtimeError != "" {
		r.RealtimeError = lv.RealtimeError
	}
	for i := range r.PeerSilence {
		r.PeerSilence[i] += lv.PeerSilence[i]
		r.OwnGap[i] += lv.OwnGap[i]
	}
	r.PeerSilenceMaxMs = max(r.PeerSilenceMaxMs, ms(lv.PeerSilenceMax))
	r.OwnGapMaxMs = max(r.OwnGapMaxMs, ms(lv.OwnGapMax))
	r.OwnStalls += lv.OwnStalls
	r.DeclaredDead += lv.DeclaredDead
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

type latencyReport struct {
	Count int64   `json:"count"`
	P50   float64 `json:"p50_us"`
	P99   float64 `json:"p99_us"`
	P999  float64 `json:"p999_us"`
	Max   float64 `json:"max_us"`
}

type syncReport struct {
	SentBytes  int64 `json:"sent_bytes"`
	TotalBytes int64 `json:"total_bytes"`
}

type transportPeers struct {
	FramesSent     uint64 `json:"frames_sent"`
	FramesReceived uint64 `json:"frames_received"`
	BytesSent      uint64 `json:"bytes_sent"`
	BytesReceived  uint64 `json:"bytes_received"`
	FrameErrors    uint64 `json:"frame_errors"`
	Handshakes     uint64 `json:"handshake_failures"`
	// Writes and Reads are the system calls on the TCP lanes' sockets
	// (ring frames make none), Batches the reads' batches answered
	// (tcpfallback.LaneStats).
	Writes  uint64 `json:"writes"`
	Reads   uint64 `json:"reads"`
	Batches uint64 `json:"batches"`
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

func (d *daemon) report() statusReport {
	s := d.ag.Status()
	hl := d.ag.HoldLatency()
	sent, total := d.ag.SyncProgress()
	r := statusReport{
		VMID: d.cfg.vmID, PID: os.Getpid(), Role: s.Role.String(), Epoch: s.Epoch, Fence: s.Fence,
		Mode: d.cfg.mode.String(), Protected: s.Protected, Syncing: s.Syncing, Synced: s.Synced, Stalled: s.Stalled,
		LastSeq: s.LastSeq, Acked: s.Acked, LogItems: s.LogItems, Held: s.Held, Released: s.Released,
		ArbiterFailures: s.ArbiterFailures, ArbiterError: s.ArbiterErr,
		Arbiter:     d.arbiterReport(),
		Releases:    d.spans.all(),
		DiskError:   d.ag.DiskError(),
		Stats:       d.ag.Stats(),
		HoldLatency: latencyReport{Count: hl.Count, P50: us(hl.P50), P99: us(hl.P99), P999: us(hl.P999), Max: us(hl.Max)},
		Sync:        syncReport{SentBytes: sent, TotalBytes: total},
		Uptime:      time.Since(d.started).Seconds(),
	}
	if s.Role == lockstep.RolePrimary && s.LastSeq > s.Acked && s.Protected {
		r.LogLag = s.LastSeq - s.Acked
	}
	d.mu.Lock()
	if !d.wentLive.IsZero() {
		r.LiveSince = d.wentLive.UTC().Format(time.RFC3339Nano)
	}
	d.mu.Unlock()
	r.Transport, r.TransportWhy = transportTCP, "not connected to a peer yet"
	if cur := d.link.current(); cur != nil {
		r.Transport, r.TransportWhy = cur.Using()
	}
	for _, tr := range d.transports() {
		ts := tr.TCP().Stats()
		for _, l := range ts.Lanes {
			r.Peer.FramesSent += l.FramesSent
			r.Peer.FramesReceived += l.FramesReceived
			r.Peer.BytesSent += l.BytesSent
			r.Peer.BytesReceived += l.BytesReceived
			r.Peer.Writes += l.Writes
			r.Peer.Reads += l.Reads
			r.Peer.Batches += l.Batches
		}
		frames, bytes := tr.RingSent()
		r.Peer.FramesSent += frames
		r.Peer.BytesSent += bytes
		r.Peer.FrameErrors += ts.FrameErrorsTotal()
		r.Liveness.add(tr.TCP().Liveness())
		r.Peer.Handshakes += ts.HandshakeFailures
	}
	r.Liveness.addRuntimePauses()
	return r
}

// serveControl listens on the control socket and answers status requests
// until the returned listener is closed.
func (d *daemon) serveControl() (io.Closer, error) {
	return d.serveControlWith(map[string]func() any{
		controlRequestStatus:    func() any { return d.report() },
		controlRequestHistogram: func() any { return d.ag.HoldHistogram() },
		dash.SampleRequest:      func() any { return d.sample() },
	})
}

// serveControlWith serves the control socket, answering each request with
// what its function returns.
func (d *daemon) serveControlWith(answers map[string]func() any) (io.Closer, error) {
	path, err := controlPath(d.cfg.control)
	if err != nil {
		return nil, err
	}
	// A socket file left by a daemon that died is in the way; one that
	// answers belongs to a daemon that is running.
	if c, err := net.DialTimeout("unix", path, controlTimeout); err == nil {
		c.Close()
		return nil, fmt.Errorf("%s: another ftvm daemon answers there: give this one its own --control", path)
	}
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go serveControlConn(c, answers)
		}
	}()
	return ln, nil
}

func serveControlConn(c net.Conn, answers map[string]func() any) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(controlTimeout))
	line, err := bufio.NewReaderSize(io.LimitReader(c, controlRequestMax), controlRequestMax).ReadString('\n')
	if err != nil && line == "" {
		return
	}
	enc := json.NewEncoder(c)
	if err != nil && len(line) >= controlRequestMax {
		enc.Encode(map[string]string{"error": fmt.Sprintf("request too long: a request is one line of at most %d bytes; the control socket answers %q and %q", controlRequestMax, controlRequestStatus, controlRequestHistogram)})
		return
	}
	req := strings.TrimSpace(line)
	if answer, ok := answers[req]; ok {
		enc.Encode(answer())
		return
	}
	enc.Encode(map[string]string{"error": fmt.Sprintf("unknown request %q: the control socket answers %q and %q", req, controlRequestStatus, controlRequestHistogram)})
}

// queryStatus asks the daemon at path for its status.
func queryStatus(ctx context.Context, path string) (*statusReport, error) {
	var dialer net.Dialer
	ctx, cancel := context.WithTimeout(ctx, controlTimeout)
	defer cancel()
	c, err := dialer.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("no ftvm daemon answers at %s: %w (is it running? give its --control path)", path, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if _, err := io.WriteString(c, controlRequestStatus+"\n"); err != nil {
		return nil, err
	}
	var raw json.RawMessage
	if err := json.NewDecoder(c).Decode(&raw); err != nil {
		return nil, fmt.Errorf("reading the status from %s: %w", path, err)
	}
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(raw, &e) == nil && e.Error != "" {
		return nil, errors.New(e.Error)
	}
	var r statusReport
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, fmt.Errorf("status from %s: %w", path, err)
	}
	return &r, nil
}

func runStatus(e *env, args []string) int {
	fs := flag.NewFlagSet("ftvm status", flag.ContinueOnError)
	vmID := fs.String("vm-id", defaultVMID, "the VM whose daemon to ask (names the default socket)")
	control := fs.String("control", "", "the daemon's control socket (default "+defaultControlDir+"/VM-ID.sock)")
	asJSON := fs.Bool("json", false, "print the daemon's answer as JSON")
	watch := fs.Duration("watch", 0, "ask again at this interval until interrupted")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `usage: ftvm status [--control PATH | --vm-id ID] [--json] [--watch 1s]

Asks a running ftvm primary or secondary, over its control socket, for its
role, epoch and fence token, whether the VM is protected, how far the
secondary's acknowledgements lag the log, how many outputs are held, and
the output-hold latency percentiles. --json prints the whole answer (the
fields are documented in cmd/ftvm/status.go).

Exit codes: 0 ok, 1 no daemon answered, 2 usage error.

flags:
`)
		fs.PrintDefaults()
	}
	if done, code := parseFlags(e, fs, args); done {
		return code
	}
	path := *control
	if path == "" {
		path = defaultControlDir + "/" + *vmID + ".sock"
	}
	for {
		r, err := queryStatus(context.Background(), path)
		if err != nil {
			fmt.Fprintf(e.stderr, "ftvm status: %v\n", err)
			return exitFailure
		}
		if *asJSON {
			json.NewEncoder(e.stdout).Encode(r)
		} else {
			printStatus(e.stdout, r)
		}
		if *watch <= 0 {
			return exitOK
		}
		time.Sleep(*watch)
	}
}

func printStatus(w io.Writer, r *statusReport) {
	state := ""
	switch {
	case r.ArbiterError != "":
		state = "WAITING FOR THE ARBITER: it cannot be asked (see below)"
	case r.Role == "primary" && r.Protected:
		state = "protected"
	case r.Role == "primary" && r.Syncing:
		state = fmt.Sprintf("re-protecting (checkpoint %s of %s sent)", mib(r.Sync.SentBytes), mib(r.Sync.TotalBytes))
	case r.Role == "primary":
		state = "UNPROTECTED: no secondary in step"
	case r.Role == "secondary" && r.Synced:
		state = "replaying"
	case r.Role == "secondary":
		state = "joining"
	}
	if r.DiskError != "" {
		state += "; PAUSED: a block write fails: " + r.DiskError
	}
	fmt.Fprintf(w, "vm %s (pid %d): %s, epoch %d, fence %d, %s, %s\n", r.VMID, r.PID, r.Role, r.Epoch, r.Fence, r.Mode, state)
	if r.Role == "primary" {
		fmt.Fprintf(w, "log: last seq %d, acked %d (lag %d), %d entries kept, %d outputs held, released through %d\n", r.LastSeq, r.Acked, r.LogLag, r.LogItems, r.Held, r.Released)
	} else {
		fmt.Fprintf(w, "log: received through %d, %d entries to replay, primary released through %d\n", r.LastSeq, r.LogItems, r.Released)
	}
	printArbiter(w, r.Arbiter)
	if r.Transport != "" {
		fmt.Fprintf(w, "transport: %s (%s)\n", r.Transport, r.TransportWhy)
	}
	if r.ArbiterError != "" {
		fmt.Fprintf(w, "arbiter: %d requests in a row failed, last: %s; asking again with back-off (check %s)\n", r.ArbiterFailures, r.ArbiterError, arbiterFlagOf(r.Arbiter.Kind))
	}
	h := r.HoldLatency
	if h.Count > 0 {
		fmt.Fprintf(w, "output hold: p50 %.0f µs, p99 %.0f µs, p99.9 %.0f µs, max %.0f µs over %d outputs\n", h.P50, h.P99, h.P999, h.Max, h.Count)
	}
	s := r.Stats
	fmt.Fprintf(w, "counters: released %d, checkpoints %d, restores %d, divergences %d, stalls %d, send errors %d, bad frames %d\n",
		s.Released, s.Checkpoints, s.Restores, s.Divergences, s.Stalls, s.SendErrors, s.FrameErrors+r.Peer.FrameErrors)
	if s.IncrementalCheckpoints+s.IncrementalRestores+s.RestoreFailures > 0 {
		fmt.Fprintf(w, "resyncs: %d increments taken, %d restored, %d increments that could not be restored (a full checkpoint followed)\n",
			s.IncrementalCheckpoints, s.IncrementalRestores, s.RestoreFailures)
	}
	if s.GuestErrors > 0 {
		fmt.Fprintf(w, "guest: %d requests refused as guest bugs (an unknown op, a buffer outside its memory, ...; the guest got an error status and went on; the log says which)\n", s.GuestErrors)
	}
	if s.DiskWriteErrors > 0 {
		fmt.Fprintf(w, "disk: %d block write attempts failed (each is retried until it succeeds)\n", s.DiskWriteErrors)
	}
	if r.LiveSince != "" {
		fmt.Fprintf(w, "took over as primary at %s\n", r.LiveSince)
	}
}

// printArbiter says which arbiter the daemon uses and, with etcd, the
// lease: its ID, TTL and the time left by this host's count.
func printArbiter(w io.Writer, a arbiterReport) {
	switch {
	case a.Kind == "":
		return // a daemon older than the field
	case a.Kind != arbiterKindEtcd:
		fmt.Fprintf(w, "arbiter: %s in %s\n", a.Kind, a.Where)
	case a.LeaseLostAt != "":
		fmt.Fprintf(w, "arbiter: etcd at %s; lease %s LOST: %s\n", a.Where, a.LeaseID, a.LeaseLostAt)
	case a.LeaseHeld:
		fmt.Fprintf(w, "arbiter: etcd at %s; lease %s, TTL %.0f s, %.1f s left\n", a.Where, a.LeaseID, a.LeaseTTL, a.LeaseLeft)
	default:
		fmt.Fprintf(w, "arbiter: etcd at %s; no lease held (not primary)\n", a.Where)
	}
}

func arbiterFlagOf(kind string) string {
	if kind == arbiterKindEtcd {
		return "--etcd-endpoints and that a quorum of etcd answers"
	}
	return "--arbiter-dir"
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
