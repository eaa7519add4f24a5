package transport

import (
	"errors"
	"fmt"
	"time"
)

// Type says what a frame carries. Transports do not interpret payloads; they
// use the type to pick a lane and to refuse frames that cannot be valid.
type Type uint8

// Frame types. Values below 16 are the transports' own (never handed to
// OnFrame, never accepted from a user); the rest are the users'.
const (
	TypeHeartbeat Type = 1 // liveness of an idle lane; empty payload
	TypeHello     Type = 2 // connection set-up
	TypeHelloDone Type = 3 // connection set-up: verdict
	// TypeLinkSetup carries a one-sided transport's set-up (package rdma:
	// its endpoint's Params, the switch of the control lane to the ring)
	// over the authenticated control lane. Never handed to OnFrame.
	TypeLinkSetup Type = 4

	TypeLog        Type = 16 // event-log entries, one record each
	TypeOutput     Type = 17 // the primary's records of outputs, for comparison
	TypeAck        Type = 18 // acknowledgements
	TypeControl    Type = 19 // small protocol messages (resync request, go-live...)
	TypeCheckpoint Type = 20 // checkpoint chunks: the only type on the bulk lane
)

func (t Type) String() string {
	switch t {
	case TypeHeartbeat:
		return "heartbeat"
	case TypeHello:
		return "hello"
	case TypeHelloDone:
		return "hello-done"
	case TypeLinkSetup:
		return "link-setup"
	case TypeLog:
		return "log"
	case TypeOutput:
		return "output"
	case TypeAck:
		return "ack"
	case TypeControl:
		return "control"
	case TypeCheckpoint:
		return "checkpoint"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Known reports whether this protocol version defines t.
func (t Type) Known() bool {
	return t == TypeHeartbeat || t == TypeHello || t == TypeHelloDone || t == TypeLinkSetup || t.User()
}

// User reports whether a user of a transport may send t.
func (t Type) User() bool { return t >= TypeLog && t <= TypeCheckpoint }

// AllowedOn reports whether a frame of type t may arrive on lane l once the
// connection is set up.
func (t Type) AllowedOn(l Lane) bool {
	return t == TypeHeartbeat || t == TypeLinkSetup && l == LaneControl || (t.User() && LaneOf(t) == l)
}

// Lane names one of the two connections (queue pairs, for RDMA) a transport
// keeps to its peer, so that an acknowledgement never waits behind a
// checkpoint chunk.
type Lane uint8

const (
	LaneControl Lane = 0 // acks, heartbeats, log entries, output records, control
	LaneBulk    Lane = 1 // checkpoint chunks
	// LaneCount is the number of lanes.
	LaneCount = 2
)

func (l Lane) String() string {
	switch l {
	case LaneControl:
		return "control"
	case LaneBulk:
		return "bulk"
	}
	return fmt.Sprintf("lane(%d)", uint8(l))
}

// LaneOf says which lane carries frames of type t.
func LaneOf(t Type) Lane {
	if t == TypeCheckpoint {
		return LaneBulk
	}
	return LaneControl
}

// Flags qualify a frame. Unknown bits are an error, so that a later version
// that gives a bit meaning is refused by an older peer, not misread.
type Flags uint8

// FlagFinal marks the last frame of a multi-frame message (the last chunk of
// a checkpoint). Transports carry it; users give it meaning.
const FlagFinal Flags = 1 << 0

// KnownFlags is every flag bit this version defines.
const KnownFlags = FlagFinal

// Frame is one received frame. Payload points into the transport's receive
// buffer and is valid only until the OnFrame call that delivered it
// returns; copy it to keep it.
type Frame struct {
	Lane    Lane
	Type    Type
	Flags   Flags
	Seq     uint32 // position on the lane's current connection, from 0
	Payload []byte
	// Batched: the transport calls its batch-end hook
	// (tcpfallback.Config.OnBatchEnd) once it has delivered every frame
	// it can read now, this one included, before it waits for more. A
	// user that answers frames (acknowledges them) may leave its answer
	// to that call and send one for the batch; without Batched it must
	// answer in OnFrame, as no such call may come.
	Batched bool
}

// OutFrame is one frame of a batch sent at once (SendBatch): what Send
// takes as arguments.
type OutFrame struct {
	Type    Type
	Flags   Flags
	Payload []byte
}

// EventKind says what happened to a lane.
type EventKind uint8

const (
	// EventLaneUp: a lane has an authenticated connection (first or again).
	EventLaneUp EventKind = iota + 1
	// EventLaneDown: a lane lost its connection; Err says why (peer closed,
	// heartbeat timeout, refused frame, write error). Sends on the lane fail
	// with ErrLaneDown until the next EventLaneUp.
	EventLaneDown
	// EventConnectFailed: an attempt to (re)connect a lane failed; the
	// transport retries after Delay.
	EventConnectFailed
	// EventGaveUp: the transport stopped reconnecting a lane (its attempt
	// limit was reached).
	EventGaveUp
	// EventPeerRejected: an incoming connection was dropped during set-up
	// (wrong version, VM id or credentials, garbage, too slow).
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

// Errors a caller tests with errors.Is.
var (
	// ErrLaneDown: the lane has no connection, or lost it during the send.
	// The frame was not (or not wholly) sent; resend after EventLaneUp if
	// it must arrive.
	ErrLaneDown = errors.New("lane down")
	// ErrClosed: the transport was closed.
	ErrClosed = errors.New("transport closed")
	// ErrRefused: connection set-up failed because one side judged the
	// other wrong (version, VM id, credentials); retrying without changing
	// the configuration will not help.
	ErrRefused = errors.New("refused")
	// ErrWouldBlock: a TrySend that could not go at once (the lane's
	// writer is busy or the socket's send buffer is full) sent nothing.
	// Send it later, in order, from a goroutine that may wait.
	ErrWouldBlock = errors.New("send would block")
)
