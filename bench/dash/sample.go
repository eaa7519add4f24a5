package dash

import (
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// SampleRequest is the control-socket request a daemon answers with its
// Sample as JSON.
const SampleRequest = "sample"

// Sample is what one daemon reports at one moment (JSON; durations in
// seconds, sizes in bytes). Fields are added, never renamed.
type Sample struct {
	Time   time.Time `json:"time"` // when the daemon took it
	VM     string    `json:"vm"`
	Host   string    `json:"host"` // the daemon's host name (--host-name)
	PID    int       `json:"pid"`
	Uptime float64   `json:"uptime_s"`

	Role      string `json:"role"` // primary, secondary, candidate, halted
	Epoch     uint64 `json:"epoch"`
	Fence     uint64 `json:"fence"`
	Protected bool   `json:"protected"` // primary: a secondary is in step
	Syncing   bool   `json:"syncing"`   // primary: a checkpoint is on its way to a secondary
	Synced    bool   `json:"synced"`    // secondary: replaying from a restored checkpoint
	Stalled   bool   `json:"stalled"`   // primary: the vCPU waits for a lagging secondary
	// Transport names the transport the daemon ships its log over
	// ("tcp"; "rdma" and "shm" to come).
	Transport string `json:"transport"`

	// The secondary's lag behind the primary's log, as the primary sees
	// it (zero on a secondary and on an unprotected primary): entries
	// written and not yet acknowledged, the log bytes sent since the
	// acknowledged position, and how long ago that position was written.
	// Bytes and seconds come from the daemon's sampler and are as fine as
	// its interval (LagSampleInterval).
	LagEntries uint64  `json:"lag_entries"`
	LagBytes   uint64  `json:"lag_bytes"`
	LagSeconds float64 `json:"lag_s"`
	// ReplayBacklog: a secondary's log entries received and not yet
	// replayed.
	ReplayBacklog int `json:"replay_backlog_entries"`

	HeldOutputs     int    `json:"held_outputs"`
	ReleasedOutputs uint64 `json:"released_outputs"`
	Stalls          uint64 `json:"stalls"`
	Divergences     uint64 `json:"divergences"`
	// BadFrames counts frames from the peer refused as corrupt, by the
	// transport's checks or the protocol's parse; each dropped its
	// connection.
	BadFrames uint64 `json:"bad_frames"`
	// CheckpointsTaken (primary) and CheckpointsRestored (secondary)
	// count the checkpoints of resyncs and joins, pre-copy parts
	// included; CheckpointPauses and CheckpointPauseSeconds the times
	// the primary's VM was paused for one, and for how long in all.
	CheckpointsTaken       uint64  `json:"checkpoints_taken"`
	CheckpointsRestored    uint64  `json:"checkpoints_restored"`
	CheckpointPauses       uint64  `json:"checkpoint_pauses"`
	CheckpointPauseSeconds float64 `json:"checkpoint_pause_s"`
	// Failovers counts the times this daemon took over as primary.
	Failovers uint64 `json:"failovers"`
	// Joins counts the checkpoints this primary began to send to a
	// joining secondary; JoinSentBytes of JoinTotalBytes of the latest
	// are sent.
	Joins          uint64 `json:"joins"`
	JoinSentBytes  int64  `json:"join_sent_bytes"`
	JoinTotalBytes int64  `json:"join_total_bytes"`

	// Lanes are the transport's lanes (tcp: "control" carries the log
	// and acknowledgements, "bulk" the checkpoints).
	Lanes []Lane `json:"lanes"`

	// Hold is the output-hold latency histogram in nanoseconds since
	// the daemon started (agent.HoldHistogram), its counts cut short of
	// the trailing zeros (hdrhistogram.Import takes them so).
	Hold *hdrhistogram.Snapshot `json:"hold"`
}

// Lane is one transport lane's counters.
type Lane struct {
	Name          string `json:"name"`
	SentBytes     uint64 `json:"sent_bytes"`
	ReceivedBytes uint64 `json:"received_bytes"`
	// RTTSeconds is the round trip the transport measures on the lane
	// (tcp: the kernel's smoothed RTT of the connection); 0 when unknown
	// or not connected.
	RTTSeconds float64 `json:"rtt_s"`
}

// LogLane is the lane that carries the log: its sent bytes are the log
// bandwidth and its round trip the transport's.
const LogLane = "control"

// logLane returns the sample's log lane, or a zero Lane.
func (s *Sample) logLane() Lane {
	for _, l := range s.Lanes {
		if l.Name == LogLane {
			return l
		}
	}
	return Lane{}
}

// LagSampleInterval is how often a daemon samples its log position for
// the lag in bytes and seconds.
const LagSampleInterval = 10 * time.Millisecond
