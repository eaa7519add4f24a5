package tcpfallback

import "github.com/ftvm/ftvm/transport"

// The vocabulary shared with the other transports and the agent lives in
// package transport. These aliases are the same types under this package's
// names, so *Transport satisfies an interface the agent declares in terms of
// package transport, and users of this package alone need not import it.
type (
	Type      = transport.Type
	Lane      = transport.Lane
	Flags     = transport.Flags
	Frame     = transport.Frame
	OutFrame  = transport.OutFrame
	Event     = transport.Event
	EventKind = transport.EventKind
)

const (
	TypeHeartbeat  = transport.TypeHeartbeat
	TypeHello      = transport.TypeHello
	TypeHelloDone  = transport.TypeHelloDone
	TypeLinkSetup  = transport.TypeLinkSetup
	TypeLog        = transport.TypeLog
	TypeOutput     = transport.TypeOutput
	TypeAck        = transport.TypeAck
	TypeControl    = transport.TypeControl
	TypeCheckpoint = transport.TypeCheckpoint

	LaneControl = transport.LaneControl
	LaneBulk    = transport.LaneBulk
	LaneCount   = transport.LaneCount

	FlagFinal  = transport.FlagFinal
	KnownFlags = transport.KnownFlags

	EventLaneUp        = transport.EventLaneUp
	EventLaneDown      = transport.EventLaneDown
	EventConnectFailed = transport.EventConnectFailed
	EventGaveUp        = transport.EventGaveUp
	EventPeerRejected  = transport.EventPeerRejected
)

var (
	ErrLaneDown   = transport.ErrLaneDown
	ErrClosed     = transport.ErrClosed
	ErrRefused    = transport.ErrRefused
	ErrWouldBlock = transport.ErrWouldBlock
)

// LaneOf says which lane carries frames of type t.
func LaneOf(t Type) Lane { return transport.LaneOf(t) }
