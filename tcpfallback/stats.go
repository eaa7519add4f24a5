package tcpfallback

import (
	"sync/atomic"
	"time"
)

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
	writes, reads                 atomic.Uint64 // system calls on the socket
	batches                       atomic.Uint64 // OnBatchEnd calls
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
	// Writes and Reads count the system calls that wrote to and read
	// from the lane's sockets once set up (a Send is one write, a
	// SendBatch one per 16 KiB under TLS; a read may bring many frames),
	// and Batches the OnBatchEnd calls.
	Writes, Reads         uint64
	Batches               uint64
	Connects              uint64 // connections installed
	Losses                uint64 // connections lost
	SocketSendBufferBytes int    // as granted by the kernel, current connection
	SocketRecvBufferBytes int
	// RTT is the kernel's smoothed round trip of the current
	// connection (TCP_INFO tcpi_rtt, microsecond resolution); 0 while
	// the lane is not connected.
	RTT time.Duration
}

// Stats is a snapshot of a transport's counters.
type Stats struct {
	Lanes [LaneCount]LaneStats
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
