package tcpfallback

import (
	"fmt"
	"sync/atomic"
	"time"
)

// EventKind says what happened to a lane.
type EventKind uint8

const (
	// EventLaneUp: a lane has an authenticated connection (first or again).
	EventLaneUp EventKind = iota + 1
	// EventLaneDown: a lane lost its connection; Err says why (peer closed,
	// heartbeat timeout, refused frame, write error). Sends on the lane fail
	// until the next EventLaneUp.
	EventLaneDown
	// EventConnectFailed: a dialer's attempt to (re)connect a lane failed;
	// it retries after the backoff in Delay.
	EventConnectFailed
	// EventGaveUp: a dialer reached ReconnectMaxAttempts on a lane.
	EventGaveUp
	// EventPeerRejected: a listener dropped an incoming connection during
	// set-up (wrong version, VM id or credentials, garbage, too slow).
	EventPeerRejected
)

func (k EventKind) String() string {
	switch k {
	case EventLaneUp:
		return "lane up"
	case EventLaneDown:
		return "lane down"
	case EventConnectFailed:
		return "connect failed"
	case EventGaveUp:
		return "gave up"
	case EventPeerRejected:
		return "peer rejected"
	}
	return fmt.Sprintf("event(%d)", uint8(k))
}

// Event reports a change a user may need to act on.
type Event struct {
	Kind    EventKind
	Lane    Lane
	Peer    string // remote address
	Err     error
	Attempt int           // EventConnectFailed, EventGaveUp: failed attempts in a row
	Delay   time.Duration // EventConnectFailed: wait before the next attempt
	Time    time.Time
}

func (e Event) String() string {
	s := fmt.Sprintf("%s lane %s (peer %s)", e.Lane, e.Kind, e.Peer)
	if e.Kind == EventConnectFailed {
		s += fmt.Sprintf(" attempt %d, retry in %v", e.Attempt, e.Delay)
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// frameErrorReasons are the keys of Stats.FrameErrors, in counter order.
var frameErrorReasons = [...]string{
	reasonHeaderCheck, reasonBadLength, reasonCRC, reasonUnknownType, reasonWrongLane,
	reasonBadFlags, reasonBadSeq, reasonBadPayload,
}

// laneStats are a lane's counters; each is accessed atomically.
type laneStats struct {
	framesSent, bytesSent         atomic.Uint64
	framesReceived, bytesReceived atomic.Uint64
	heartbeatsSent                atomic.Uint64
	heartbeatsReceived            atomic.Uint64
	heartbeatTimeouts             atomic.Uint64
	connects, losses              atomic.Uint64
}

// transportStats are the transport-wide counters.
type transportStats struct {
	frameErrors       [len(frameErrorReasons)]atomic.Uint64
	handshakeFailures atomic.Uint64
	eventsDropped     atomic.Uint64
}

func (s *transportStats) countFrameError(reason string) {
	for i, r := range frameErrorReasons {
		if r == reason {
			s.frameErrors[i].Add(1)
			return
		}
	}
}

// LaneStats is a snapshot of one lane's counters. Bytes count whole frames,
// headers included.
type LaneStats struct {
	FramesSent, BytesSent         uint64
	FramesReceived, BytesReceived uint64
	HeartbeatsSent                uint64
	HeartbeatsReceived            uint64
	HeartbeatTimeouts             uint64
	Connects                      uint64 // connections installed
	Losses                        uint64 // connections lost
	SocketSendBufferBytes         int    // as granted by the kernel, current connection
	SocketRecvBufferBytes         int
}

// Stats is a snapshot of a transport's counters.
type Stats struct {
	Lanes [laneCount]LaneStats
	// FrameErrors counts refused frames by reason ("CRC mismatch", ...).
	FrameErrors map[string]uint64
	// HandshakeFailures counts set-ups that failed on either side.
	HandshakeFailures uint64
	// EventsDropped counts events lost because the Events channel was full.
	EventsDropped uint64
}

// FrameErrorsTotal sums FrameErrors.
func (s Stats) FrameErrorsTotal() uint64 {
	var n uint64
	for _, v := range s.FrameErrors {
		n += v
	}
	return n
}
