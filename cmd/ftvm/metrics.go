package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ftvm/ftvm/bench/dash"
	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/tcpfallback"
)

// The daemon's figures for /metrics (--metrics-listen) and the dashboard
// (the control socket's "sample"): read from the agent and the
// transports when asked, as `ftvm status` reads them; nothing is added
// on the vCPU thread. The lag in bytes and seconds needs the log's
// position over time: a sampler records it every dash.LagSampleInterval
// while someone asks (it stops samplerIdleStop after the last question).

// samplerIdleStop: the lag sampler stops this long after the last sample
// was asked for (longer than Prometheus's usual scrape interval).
const samplerIdleStop = 2 * time.Minute

// lagSamplesMax bounds the sampler's memory: 10 s at 10 ms.
const lagSamplesMax = 1000

type lagPoint struct {
	t    time.Time
	seq  uint64
	sent uint64 // log lane bytes sent
}

// metricsState is the daemon's part of the metrics: the lag sampler and
// the counters only the daemon sees.
type metricsState struct {
	joins atomic.Uint64 // checkpoints begun to a joining secondary (progress)

	mu       sync.Mutex
	running  bool
	lastAsk  time.Time
	points   []lagPoint // oldest first
	stopLife context.Context
}

// metricsTransport is the transport the daemon ships its log over, for
// ftvm_transport_info and the dashboard: the one `ftvm status` reports
// (tcp before a peer is connected).
func (d *daemon) metricsTransport() string {
	if cur := d.link.current(); cur != nil {
		if name, _ := cur.Using(); name != "" {
			return name
		}
	}
	return "tcp"
}

// laneNames names tcpfallback's lanes by index.
var laneNames = [tcpfallback.LaneCount]string{dash.LogLane, "bulk"}

// sample is the daemon's dash.Sample now.
func (d *daemon) sample() *dash.Sample {
	d.metrics.ask(d)
	r := d.report()
	st := d.ag.Stats()
	s := &dash.Sample{
		Time: time.Now(), VM: d.cfg.vmID, Host: d.cfg.hostName, PID: os.Getpid(), Uptime: r.Uptime,
		Role: r.Role, Epoch: r.Epoch, Fence: r.Fence, Protected: r.Protected, Syncing: r.Syncing, Synced: r.Synced, Stalled: r.Stalled,
		Transport:  d.metricsTransport(),
		LagEntries: r.LogLag, HeldOutputs: r.Held, ReleasedOutputs: st.Released, Stalls: st.Stalls, Divergences: st.Divergences,
		BadFrames:        st.FrameErrors + r.Peer.FrameErrors,
		CheckpointsTaken: st.Checkpoints, CheckpointsRestored: st.Restores,
		CheckpointPauses: st.Pauses, CheckpointPauseSeconds: st.PausedFor.Seconds(),
		Joins: d.metrics.joins.Load(), JoinSentBytes: r.Sync.SentBytes, JoinTotalBytes: r.Sync.TotalBytes,
		Hold: d.ag.HoldHistogram(),
	}
	// The counts past the largest latency are zeros: most of them, as
	// the histogram reaches 60 s. Leave them out of the answer.
	c := s.Hold.Counts
	for len(c) > 0 && c[len(c)-1] == 0 {
		c = c[:len(c)-1]
	}
	s.Hold.Counts = c
	if r.Role != "primary" {
		s.ReplayBacklog = r.LogItems
	}
	if r.LiveSince != "" {
		s.Failovers = 1 // a daemon goes live at most once; it rejoins as a new process
	}
	lanes := make([]dash.Lane, tcpfallback.LaneCount)
	for i := range lanes {
		lanes[i].Name = laneNames[i]
	}
	for _, tr := range d.transports() {
		ts := tr.TCP().Stats()
		for i, l := range ts.Lanes {
			lanes[i].SentBytes += l.BytesSent
			lanes[i].ReceivedBytes += l.BytesReceived
			if l.RTT > 0 {
				lanes[i].RTTSeconds = l.RTT.Seconds()
			}
		}
		// Over shm or verbs the log goes through the peer's ring, not TCP.
		_, ringBytes := tr.RingSent()
		lanes[0].SentBytes += ringBytes
	}
	s.Lanes = lanes
	if r.Role == "primary" && r.Protected && r.LogLag > 0 {
		s.LagBytes, s.LagSeconds = d.metrics.lag(r.Acked, lanes[0].SentBytes, s.Time)
	}
	return s
}

// ask notes a question and starts the sampler if it is not running.
func (m *metricsState) ask(d *daemon) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.lastAsk = time.Now()
	if m.running || m.stopLife == nil {
		return
	}
	m.running = true
	go m.sampleLag(d)
}

// sampleLag records the log position and the bytes sent every
// dash.LagSampleInterval until nobody asked for samplerIdleStop.
func (m *metricsState) sampleLag(d *daemon) {
	t := time.NewTicker(dash.LagSampleInterval)
	defer t.Stop()
	for {
		select {
		case <-m.stopLife.Done():
			m.mu.Lock()
			m.running = false
			m.mu.Unlock()
			return
		case now := <-t.C:
			s := d.ag.Status()
			var sent uint64
			for _, tr := range d.transports() {
				_, ringBytes := tr.RingSent()
				sent += tr.TCP().Stats().Lanes[0].BytesSent + ringBytes
			}
			m.mu.Lock()
			if now.Sub(m.lastAsk) > samplerIdleStop {
				m.running, m.points = false, nil
				m.mu.Unlock()
				return
			}
			if s.Role == lockstep.RolePrimary {
				m.points = append(m.points, lagPoint{now, s.LastSeq, sent})
				if over := len(m.points) - lagSamplesMax; over > 0 {
					m.points = append(m.points[:0], m.points[over:]...)
				}
			}
			m.mu.Unlock()
		}
	}
}

// lag is the log bytes sent since, and the time since, the first sample
// whose position reached acked, the newest position the secondary
// acknowledged: when that position was written, to within a sampling
// interval. Zero when it was written after the latest sample; when it
// is older than every sample kept, the oldest (a lower bound).
func (m *metricsState) lag(acked, sentNow uint64, now time.Time) (bytes uint64, seconds float64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	i := sort.Search(len(m.points), func(i int) bool { return m.points[i].seq >= acked })
	if i == len(m.points) {
		return 0, 0
	}
	p := m.points[i]
	if sentNow > p.sent {
		bytes = sentNow - p.sent
	}
	return bytes, now.Sub(p.t).Seconds()
}

// startMetrics arms the sampler for ctx and serves /metrics when
// --metrics-listen asks for it.
func (d *daemon) startMetrics(ctx context.Context) error {
	d.metrics.mu.Lock()
	d.metrics.stopLife = ctx
	d.metrics.mu.Unlock()
	if d.cfg.metricsListen == "" {
		return nil
	}
	c := dash.NewCollector(d.cfg.vmID, d.started, func(context.Context) (*dash.Sample, error) { return d.sample(), nil })
	_, bound, err := dash.ListenMetrics(ctx, d.cfg.metricsListen, c)
	if err != nil {
		return fmt.Errorf("--metrics-listen: %w", err)
	}
	d.log.Info("serving Prometheus metrics", "url", "http://"+bound+"/metrics")
	return nil
}
