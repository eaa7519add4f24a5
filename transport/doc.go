// Package transport is the vocabulary the log-shipping transports
// (tcpfallback, and rdma, which moves the control lane into rings in the
// peer's memory over a tcpfallback connection) share with the agent that drives them:
// frame types and the lane each travels on, flags, the received Frame, the
// Events a transport reports and the errors callers test with errors.Is.
//
// It holds no code that does I/O and no interface: following the rule that
// an interface is declared by the package that uses it, the agent declares
// the Transport interface it needs, in terms of these types, and both
// concrete transports satisfy it because they use these very types (the
// transports' own names for them are aliases). A separate package keeps the
// rdma transport from importing tcpfallback, or the other way round, just to
// agree on what a TypeAck is.
//
// # The contract every transport keeps
//
// A transport has these methods, and takes OnFrame func(Frame) in its
// configuration:
//
//	Send(typ Type, payload []byte) error
//	SendFlags(typ Type, flags Flags, payload []byte) error
//	Events() <-chan Event
//	Close() error
//
// and behaves as follows:
//
//   - Send, SendFlags: one frame on the lane LaneOf(typ), in order per lane.
//     They return once the bytes are handed to the kernel or the NIC; the
//     payload may be reused then. No retry and no queueing while a lane is
//     down: the error wraps ErrLaneDown, and the protocol above resends
//     whatever was not acknowledged. Only user types (Type.User) may be sent.
//   - OnFrame: called on the transport's goroutine, never for transport-
//     internal types; Frame.Payload is valid until it returns; frames of one
//     lane arrive in the order sent; no allocation per frame in steady state.
//   - Events: EventLaneUp and EventLaneDown per lane, set-up failures; the
//     loss of a silent peer is reported within the configured heartbeat
//     timeout plus one heartbeat interval. The channel is bounded; overflow
//     is counted and never blocks the transport.
//   - Close: idempotent; waits for running OnFrame calls (so it must not be
//     called from OnFrame); closes Events.
//   - Set-up authenticates the peer, checks the VM id and the protocol
//     version, and fails with an error wrapping ErrRefused when retrying
//     cannot help.
//
// The agent's interface (agent.Transport) asks for Send only (checkpoint
// chunks too: each names its offset, and a checkpoint-done message ends
// the checkpoint); the daemon uses Events and Close of the concrete
// transport it wires. SendFlags and FlagFinal are kept for a bulk sender
// that needs a frame boundary marked; today only the throughput benchmark
// (tcpfallback/tcpbench) sends with them.
//
// # Optional methods
//
// A transport may also offer these; a caller finds them by a type
// assertion and does without them otherwise:
//
//   - TrySend(typ Type, payload []byte) error: Send that refuses, with
//     ErrWouldBlock and nothing sent, a send that would wait for the lane's
//     writer or for room in the socket. The transport's own readers (the
//     agent's acks sent from OnFrame) need it: a reader that waits reads
//     nothing meanwhile (agent.TrySender).
//   - SendBatch(frames []OutFrame) (sent int, err error) and
//     TrySendBatch(frames []OutFrame) (sent int, err error): frames of one
//     lane, in order, handed to the kernel (or the ring) together: over TCP
//     one write for the lot where Send makes one a frame. Nothing waits
//     for more frames: a batch is what the caller has now (the agent: all
//     a Ready asks to send). Frames [0, sent) went; TrySendBatch stops
//     with ErrWouldBlock where it would wait (tcpfallback: before the
//     first frame or not at all). agent.BatchSender.
//   - SendSpan(typ Type, span []byte) (frames int, err error): every record
//     of a byte-ring span (package ring's layout) as its own frame,
//     payloads not copied; a span that cannot be sent whole sends nothing.
//     tcpfallback has it; only the throughput benchmark
//     (tcpfallback/tcpbench, ftvm bench transport) and tests call it: the
//     agent sends entry by entry with Send.
//   - DropLane(l Lane, err error) (peer string): close lane l's
//     connection with err as the reason, as if it had failed (EventLaneDown,
//     a dialer reconnects), deliver nothing more of it to OnFrame, and say
//     whose it was. May be called from OnFrame. Both transports have it;
//     the agent drops the lane a frame that is not a protocol message came
//     on (agent.LaneDropper), as a transport drops one on a frame that
//     fails its own checks.
//   - Poll() int: deliver to OnFrame, inline on the caller's goroutine,
//     what has arrived, without blocking or a system call, and say how
//     many frames. rdma.Transport has it (frames in its ring); the agent
//     calls it on the vCPU thread at every exit (agent.Poller).
//
// TypeLinkSetup frames are a transport's own: rdma sends its ring's
// set-up in them over tcpfallback's authenticated control lane, and they
// never reach OnFrame.
package transport
