// Package tcpfallback carries ftvm's frames (event-log entries, output
// records, acknowledgements, control messages and checkpoint chunks) between
// the primary and secondary host over TCP, where there is no RDMA. It moves
// opaque frames: it never imports lockstep and never looks inside a payload.
//
// Latency is the product: whatever this package adds to a round trip is
// added to every packet the protected VM sends, because outputs are held
// until the secondary acknowledges. The data path therefore has no goroutine
// hand-off on either side: Send writes in the caller's goroutine, and the
// lane's reading goroutine calls OnFrame directly with a payload that points
// into its reusable receive buffer.
//
// # Usage
//
//	// secondary
//	tr, err := tcpfallback.Listen(":7070", tcpfallback.Config{
//		VMID: "web1", TLS: tlsCfg,
//		PeerNames: []string{"host-a"}, // who may connect: its certificate must name host-a
//		OnFrame: func(f tcpfallback.Frame) { copyIntoRing(f.Payload) }, // payload is only lent
//	})
//	// primary
//	tr, err := tcpfallback.Dial(ctx, "secondary:7070", cfg)
//	err = tr.Send(tcpfallback.TypeLog, entry)           // one frame, from the thread that made it
//	err = tr.Send(tcpfallback.TypeCheckpoint, chunk)    // bulk lane
//	err = tr.TrySend(tcpfallback.TypeAck, ack)          // from OnFrame: ErrWouldBlock instead of waiting
//	for ev := range tr.Events() { ... }                 // lane up/down, set-up failures
//	tr.Close()
//
// # The contract
//
// The contract is package transport's (its documentation lists it): the
// frame types and lanes, Frame, Event and the errors are that package's
// types under aliases here, so the agent can declare one interface that this
// transport and the RDMA one both satisfy. What follows is how this
// transport keeps it over TCP: the 16-byte header below is TCP framing
// (RDMA messages have boundaries and a link CRC of their own). TrySend and
// SendSpan are this transport's optional methods (package transport says
// what each is for): the agent sends with Send and, from OnFrame, with
// TrySend; SendSpan, which sends a span of package ring's byte ring as
// frames without copying, is the bulk path of the throughput benchmark
// (tcpbench, ftvm bench transport) and of tests, not of the daemon.
//
// # Two lanes
//
// A transport keeps two TCP connections to its peer: the control lane
// (acknowledgements, heartbeats, log entries, output records, control
// messages) and the bulk lane (checkpoint chunks only). A priority scheme on
// one connection cannot keep an acknowledgement from waiting behind a
// checkpoint: once a chunk is in the socket's send queue, TCP delivers it
// in order, and a 1 MiB chunk on a 10 Gbit/s link is 0.8 ms, fifty loopback
// round trips. Two connections give two kernel queues, two congestion
// windows and two receive buffers, so the control lane's latency does not
// depend on what the bulk lane carries. Each lane has its own write lock,
// its own reader and its own heartbeats, and is reconnected on its own.
//
// # Frame layout
//
// Every frame is a 16-byte header and a payload, all integers little-endian:
//
//	offset size field
//	0      4    payload length L in bytes (≤ MaxPayloadBytes of the receiver)
//	4      1    type (Type: 1 heartbeat, 2 hello, 3 hello-done, 4 link-setup, 16 log,
//	            17 output, 18 ack, 19 control, 20 checkpoint)
//	5      1    flags (bit 0 FlagFinal; other bits must be zero)
//	6      2    header check: low 16 bits of CRC32C over bytes 0..5 and 8..11
//	8      4    sequence number: 0 for the first frame of a connection, then +1
//	12     4    CRC32C (Castagnoli) over bytes 0..11, then over the payload
//	16     L    payload
//
// The receiver checks, in this order: the header check and the length
// against its maximum (both as soon as the header is in, so that a corrupt
// length can neither make it allocate gigabytes nor leave it waiting for a
// payload that never comes while heartbeats keep the lane alive), the CRC,
// type known, type allowed on this lane, flags, sequence number, empty
// heartbeat payload. The first check
// that fails closes the connection with a FrameError naming what failed
// (for a CRC mismatch, both values), counts it in Stats.FrameErrors and
// delivers nothing after it. CRC32C is against accidents (a buggy
// middlebox, a memory error), not attackers: use TLS for that.
//
// # Connection set-up
//
// Each lane's connection is set up on its own, within HandshakeTimeout:
// TCP, then TLS 1.3 with client certificates required and verified on both
// sides (the default; NewTLSConfig, WriteTestCertificates), then four
// frames:
//
//	dialer → listener  hello       "FTVM", version, lane, auth mode, max payload, 32-byte nonce,
//	                               VM id (length byte, bytes), host name (length byte, bytes)
//	listener → dialer  hello       the same about the listener
//	dialer → listener  hello-done  verdict on the listener's hello (+ PSK proof)
//	listener → dialer  hello-done  verdict on everything (+ PSK proof)
//
// A hello's payload (ProtocolVersion 3; 2 added the host name, 3 the
// link-setup frame, type 4, that package rdma sets its ring up with), integers
// little-endian:
//
//	offset   size  field
//	0        4     magic "FTVM"
//	4        2     version (ProtocolVersion; another one is refused, named)
//	6        1     lane (0 control, 1 bulk)
//	7        1     auth mode (1 TLS, 2 pre-shared key)
//	8        4     the largest frame payload the sender accepts
//	12       32    nonce
//	44       1     length n of the VM id, 1..MaxVMIDBytes (64)
//	45       n     VM id
//	45+n     1     length m of the host name (Config.Name), 0..MaxNameBytes (64)
//	46+n     m     host name
//
// A hello-done's payload: 1 byte verdict (0 accepted, 1 refused, 2 busy:
// refused for now, another peer holds the lanes), 32 bytes PSK proof
// (HMAC-SHA256 under PSK, zeros otherwise), then the reason for a refusal, up to 512
// bytes of text.
//
// With Config.PSK instead of TLS each side proves knowledge of the key by
// an HMAC-SHA256 over a per-direction label and both hellos (so both fresh
// nonces), compared in constant time; frames then travel in clear, which
// suits only trusted fabrics.
//
// # Who the peer is
//
// Authentication proves only that the peer holds a certificate from the
// CA (or the key); Config.PeerNames says which peers are expected. Under
// TLS a peer is accepted only if its verified certificate is valid for one
// of the names (x509 host-name rules); under PSK only if the host name in
// its hello (Config.Name) is one of them. The name is inside both hellos,
// which the proofs cover, so it cannot be changed on the way; but every
// holder of the one key can claim any name, so under PSK the check keeps
// out a misconfigured host, not a malicious key holder. Both sides check:
// the dialer the listener, the listener the dialer. A peer that is not
// expected is refused with the names it presented.
//
// A listener never lets a connection from one peer replace a lane's live
// connection from another: while either lane is connected, set-ups by
// any other peer (however well authenticated) are refused, and only the
// connected peer itself may replace its connections (it saw a loss first
// and reconnected). A stranger therefore cannot take the lanes from an
// in-step secondary, and its refusal is never reported as a lost peer.
//
// A peer with another protocol version, VM id,
// authentication mode or key, or one that sends something that is not a
// frame, is told why (when it can understand) and dropped, and the error
// wraps ErrRefused where retrying cannot help. The listener goes on
// serving: one bad peer never blocks the right one. At most
// maxPendingHandshakes set-ups run at once, each bounded by the deadline;
// one more evicts the oldest, so a flood of silent connections pushes out
// its own members while the right peer, which needs only a couple of round
// trips, gets through.
//
// # Liveness and reconnection
//
// A watchdog decides whether the peer lives and sends this side's
// heartbeats: two threads for the whole process (one a CPU), each pinned
// to its own CPU and raised to SCHED_FIFO where the process may
// (Liveness().Realtime says; RealtimeError why not), each sending
// heartbeats and counting silence on its own, so that a CPU the
// hypervisor holds silences neither side; they sleep in nanosleep(2)
// rather than on a Go timer and, where GOMAXPROCS exceeds the CPUs, keep
// their Go processor while they sleep, so that a loaded host (or a
// process whose Ps are all busy) delays neither their heartbeats nor
// their looks. Neither takes a lock that another thread may hold while it
// is not run: each keeps its own statistics and publishes a copy for
// Liveness only when no reader holds it, and reads the set of transports
// from a snapshot (a status reader preempted while holding the watchdog's
// one lock once stopped both threads for 126 ms, and the peer took the
// host for dead). Each looks at each lane twice per HeartbeatInterval
// (default 2 ms), the two threads half a tick apart. A lane that has sent nothing
// for an interval sends a heartbeat (never waiting for a writer that holds
// the lane, nor for room in the socket: a writer is as good as a
// heartbeat, and a full socket means a peer that does not read). The peer
// counts as heard on a lane when the lane's reader read anything, or when
// more bytes wait unread in its socket than at the last look (SIOCINQ: a
// reader that is busy or not run is not a dead peer). Silence is counted
// in the watchdog's own time: each look adds the time since the last one,
// but at most two tick periods, so a watchdog that was itself not run (the
// process or the whole machine paused) measures silence from its own
// resumption and never takes a pause it did not watch for the peer's
// death. When no lane has heard the peer for HeartbeatTimeout (default
// 50 ms; SetHeartbeatTimeout changes it on a live transport), every lane
// is declared dead, closed and reported as
// EventLaneDown with a HeartbeatTimeoutError; a lane that alone is silent
// for four timeouts while the other hears the peer is declared dead by
// itself. While the watchdog runs on time, loss is reported within
// HeartbeatTimeout + HeartbeatInterval of the peer's last byte; Liveness
// reports the silences it counted and its own gaps, to tell a peer that
// was not run from a host that was not. A connection reset or a refused
// frame is reported at once. The dialer then
// redials with exponential backoff from ReconnectMinDelay to
// ReconnectMaxDelay, each delay drawn from its upper half (jitter), for at
// most ReconnectMaxAttempts attempts in a row if set. Frames are not
// replayed across connections: sequence numbers restart at 0 and the
// protocol above resends what was not acknowledged.
//
// A peer can keep its connection alive (heartbeats flow) and still stop
// reading: its reader is stuck. Every write therefore has a deadline,
// SendTimeout (DefaultSendTimeout, 250 ms, unless set): a write that cannot hand
// its bytes to the kernel in that time fails, and the connection is
// treated as lost like any other. Frames larger than 64 KiB go in pieces,
// each with a fresh deadline, so the bound is on a write that makes no
// progress, not on a large chunk over a slow link. A lane reader must not
// wait at all: while it waits for room in its socket it reads nothing,
// and if the peer's reader is waiting for it the same way, neither ever
// reads again. TrySend is for it: it sends only if the lane's writer is
// free and the socket's send buffer (SO_MEMINFO: SO_SNDBUF less what is
// queued) has room for the frame, and otherwise returns ErrWouldBlock
// having sent nothing, for the caller to send later, in order, from a
// goroutine that may wait.
//
// # Latency and throughput choices
//
// TCP_NODELAY is on (a 64-byte entry must leave now, not after 40 ms).
// Frame headers are built in a per-connection arena and sent together with
// the caller's payload slices by writev (net.Buffers): SendSpan never copies
// a payload and puts up to maxBatchFrames frames in one system call. A
// single Send of at most coalesceMaxBytes (an ack, one log entry) is the
// exception: the payload is copied behind its header and leaves in one
// write of one buffer, because a 64-byte copy costs less than the kernel's
// handling of a second iovec. The daemon's log goes by Send, one entry a
// write, from the vCPU thread; SendSpan's batches (while one span is in
// the kernel, the producer appends records to the ring, and the next span
// takes them all) are what tcpbench's entry throughput measures. Under TLS every byte is
// encrypted into a record anyway, so frames are staged in a 16 KiB buffer
// (one TLS record) and flushed once per Send, SendSpan or SendBatch.
//
// SendBatch sends the frames a caller has at one moment (the agent: what
// one Ready sends) in one write: one system call, one TLS record and one
// wake-up of the peer's reader for the lot. It never waits for more: a
// batch is what is at hand, so a lone frame leaves as Send sends it.
//
// With Config.OnBatchEnd the reading side does the same for answers: the
// lane's reader delivers every frame it can read without waiting (what
// TLS holds of records already read, then what the socket holds; a
// socket its last read found empty is not asked again before the batch
// ends) and then calls OnBatchEnd, before it waits for more, so that the
// agent sends one cumulative acknowledgement for all the log entries it
// read at once. There is no timer: a lone frame's batch ends as soon as
// it is delivered. Stats counts the writes and reads (system calls) and
// the batches.
//
// Socket buffers: 1 MiB on the control lane (about 6 ms of log entries at
// 2 M entries/s, enough to ride out a receiver pause without stalling the
// VM, small enough not to hide a stuck peer) and 4 MiB on the bulk lane (a
// 10 Gbit/s, 2 ms bandwidth-delay product plus a chunk). SO_*BUFFORCE is
// used when permitted so that net.core.*mem_max does not silently cap them;
// Stats reports what the kernel granted.
//
// Config.BusyPoll makes the control lane's reader spin on non-blocking reads for the
// given time before sleeping in Go's poller, and sets SO_BUSY_POLL for
// NICs that support busy polling. It removes the wake-up from the critical
// path (most of a loopback round trip) and costs a core while it spins; on
// a host whose cores are shared it can make things worse.
package tcpfallback
