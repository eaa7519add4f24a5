package tcpfallback

import (
	"crypto/tls"
	"errors"
	"fmt"
	"time"
)

// Defaults for Config fields left zero.
const (
	// DefaultHandshakeTimeout bounds connection set-up (TCP, TLS, hello):
	// a peer that stalls longer is dropped.
	DefaultHandshakeTimeout = 5 * time.Second
	// DefaultHeartbeatInterval: an idle lane sends a heartbeat this often,
	// from the watchdog's real-time thread (see the package doc,
	// "Liveness and reconnection").
	DefaultHeartbeatInterval = 2 * time.Millisecond
	// DefaultHeartbeatTimeout: a peer that has been heard on no lane for
	// this long, as the watchdog counts it (time the watchdog was itself
	// not run does not count), is declared dead. It is also the daemon's
	// --heartbeat-timeout default. On the loaded 2-core PVM machines
	// measured (load average 4-5, other work beside the pair) a peer in
	// step went unheard for 13-45 ms now and then although its heartbeats
	// come from real-time threads, and at 12 ms pairs broke by themselves
	// about once a minute, so the default is 50 ms; on a host with cores
	// to spare, 12 ms meets a 20 ms failover (README, "How fast a silent
	// host is replaced").
	DefaultHeartbeatTimeout = 50 * time.Millisecond
	// DefaultSendTimeout bounds a write that makes no progress when
	// Config.SendTimeout is zero (or the heartbeat timeout, if longer). It
	// is not the heartbeat timeout: a peer that is alive but whose reader
	// was not run for a few milliseconds fills a socket buffer quickly, and
	// that is no reason to drop a connection.
	DefaultSendTimeout = 250 * time.Millisecond
	// DefaultReconnectMinDelay and DefaultReconnectMaxDelay bound the
	// jittered exponential backoff between reconnection attempts.
	DefaultReconnectMinDelay = 10 * time.Millisecond
	DefaultReconnectMaxDelay = 2 * time.Second
	// DefaultEventQueueLen bounds the Events channel; events that do not
	// fit are counted in Stats.EventsDropped.
	DefaultEventQueueLen = 256
	// minHeartbeatTimeoutIntervals: the timeout must cover at least this
	// many intervals, or one late heartbeat would kill a healthy lane.
	minHeartbeatTimeoutIntervals = 2
	// maxPendingHandshakes bounds the connections a listener sets up at
	// once, so that a flood of silent peers costs bounded memory; a new
	// connection beyond it evicts the oldest one in set-up.
	maxPendingHandshakes = 32
)

// Config configures a transport. Exactly one of TLS and PSK must be set.
type Config struct {
	// VMID names the protected VM. Both peers must use the same id; a peer
	// with another is refused. At most MaxVMIDBytes bytes.
	VMID string

	// TLS enables mutual TLS 1.3 (the default way to authenticate; see
	// NewTLSConfig and LoadTLSConfig). The configuration must carry this
	// host's certificate and the CA that signed the peer's; peer
	// certificates are required and verified in both directions. A dialer
	// checks the listener's name against TLS.ServerName, or the host part
	// of the address it dials when that is empty.
	TLS *tls.Config

	// Name is this host's name as its peer checks it under PSK: it
	// travels in the hello, covered by the proof of the key, and the peer
	// matches it against its PeerNames. Under TLS the certificate names
	// the host and Name is only informative. At most MaxNameBytes bytes.
	Name string

	// PeerNames are the peers this side accepts. Under TLS a peer is
	// accepted only if its certificate, verified against the CA, is valid
	// for one of the names (x509 host-name rules: DNS names, wildcards, IP
	// addresses); under PSK only if the Name in its hello is one of them.
	// A peer that is not is refused and reported (EventPeerRejected) with
	// the names it presented. Empty accepts any peer the CA or the key
	// authenticates. Whatever it holds, a listener never lets a new
	// connection replace a live one from another peer: while a lane is
	// connected to one peer, connections from any other are refused, for
	// now (Dial keeps trying such a refusal until its context ends).
	// Peers are told apart by every name their certificate carries, or
	// under PSK by their Name (so give each host its own).
	PeerNames []string

	// PSK enables pre-shared-key authentication instead of TLS: an HMAC-
	// SHA256 challenge-response over fresh nonces, in both directions.
	// Frames then travel unencrypted and protected only by CRC32C against
	// accidents, not attackers: use it on trusted fabrics only. At least
	// MinPSKBytes bytes.
	PSK []byte

	// OnFrame receives every frame the peer sends, on the reading goroutine
	// of the frame's lane (so calls for different lanes can overlap). The
	// payload is valid only until OnFrame returns. OnFrame must not block
	// for long: while it runs, nothing else is read from that lane, and a
	// lane that reads nothing for HeartbeatTimeout is declared dead. It may
	// call Send (acknowledge from here), but not Close.
	OnFrame func(Frame)

	// OnBatchEnd, if set, is called by a lane's reader once it has
	// delivered every frame it can read without waiting (at least one
	// since the last call), before it waits for more; frames then come
	// with Frame.Batched set. A user that answers frames (the agent's
	// acknowledgements) may answer a batch at once here, with one send
	// where OnFrame would make one a frame. The reader never waits for
	// more frames to end a batch (no timer): a lone frame's batch ends
	// as soon as it is delivered, and what arrives during the call is
	// read right after it. The same rules as OnFrame's apply.
	OnBatchEnd func(Lane)

	// OnLinkSetup, if set, receives the control lane's link-setup frames
	// (TypeLinkSetup: package rdma's set-up of its ring, which it sends
	// with SendLinkSetup), on the control lane's reader, in order with
	// the frames OnFrame gets. Nil: they are dropped, so a peer that
	// offers a ring to a plain TCP transport gets no answer and stays on
	// TCP. The same rules as OnFrame's apply.
	OnLinkSetup func(Frame)

	// MaxPayloadBytes is the largest frame payload this side accepts and
	// sends. Zero means DefaultMaxPayloadBytes.
	MaxPayloadBytes uint32

	// HandshakeTimeout bounds connection set-up. Zero means the default.
	HandshakeTimeout time.Duration

	// HeartbeatInterval and HeartbeatTimeout: each lane sends a heartbeat
	// when it has sent nothing for an interval, and the peer is declared
	// dead when no lane has received anything for the timeout, counted
	// in the watchdog's time (see the package doc). Loss is reported
	// within HeartbeatTimeout + HeartbeatInterval of the peer's last byte
	// while the watchdog runs on time.
	HeartbeatInterval time.Duration
	HeartbeatTimeout  time.Duration

	// OnWatchdog, if set, is called on the watchdog's real-time thread
	// with WatchdogStarted once, WatchdogLook at each of its looks (twice
	// per HeartbeatInterval) and WatchdogStopped once as Close ends it. It
	// must return at once (an atomic store). The daemon's transmit fence
	// watches with it whether this process runs.
	OnWatchdog func(WatchdogEvent)

	// SendTimeout bounds every write to a lane's socket: a send (or a
	// heartbeat) that cannot hand its bytes to the kernel in this time
	// fails, and the connection is treated as lost (EventLaneDown; the
	// protocol above resends on the next one). A peer that keeps its
	// connection alive but stops reading therefore costs a writer at most
	// this long. Zero means DefaultSendTimeout or HeartbeatTimeout,
	// whichever is longer.
	SendTimeout time.Duration

	// ReconnectMinDelay and ReconnectMaxDelay bound the dialer's
	// exponential backoff; each delay is drawn uniformly from its upper
	// half. ReconnectMaxAttempts > 0 makes a dialer give up on a lane after
	// that many failed attempts in a row (EventGaveUp); zero retries until
	// Close.
	ReconnectMinDelay    time.Duration
	ReconnectMaxDelay    time.Duration
	ReconnectMaxAttempts int

	// BusyPoll, when positive and TLS is off, makes the control lane's
	// reader spin on non-blocking reads for this long before sleeping in
	// the poller, and sets SO_BUSY_POLL on it. It takes the reader's
	// wake-up out of every round trip at the price of a busy core while
	// traffic flows. The bulk lane never spins: a checkpoint chunk does
	// not need its first byte a few microseconds sooner. Give it a spare
	// core: where spinners hold every processor, the transport's own
	// heartbeats can starve long enough to fake a dead peer.
	BusyPoll time.Duration

	// ControlSocketBufferBytes and BulkSocketBufferBytes set SO_SNDBUF and
	// SO_RCVBUF per lane. Zero means the defaults; negative leaves the
	// kernel's autotuning on.
	ControlSocketBufferBytes int
	BulkSocketBufferBytes    int

	// EventQueueLen is the capacity of the Events channel.
	EventQueueLen int

	// protocolVersion overrides ProtocolVersion in tests.
	protocolVersion uint16
}

// withDefaults returns a copy with zero fields defaulted, or an error naming
// the first field that is wrong and how to fix it.
func (c Config) withDefaults() (Config, error) {
	if c.VMID == "" || len(c.VMID) > MaxVMIDBytes {
		return c, fmt.Errorf("tcpfallback: Config.VMID %q must be 1..%d bytes", c.VMID, MaxVMIDBytes)
	}
	switch {
	case c.TLS != nil && c.PSK != nil:
		return c, errors.New("tcpfallback: set Config.TLS or Config.PSK, not both")
	case c.TLS == nil && c.PSK == nil:
		return c, errors.New("tcpfallback: set Config.TLS (mutual TLS; see LoadTLSConfig and `ftvm certs`) or Config.PSK (trusted fabrics only)")
	case c.PSK != nil && len(c.PSK) < MinPSKBytes:
		return c, fmt.Errorf("tcpfallback: Config.PSK is %d bytes; use at least %d random bytes", len(c.PSK), MinPSKBytes)
	case c.TLS != nil && len(c.TLS.Certificates) == 0 && c.TLS.GetCertificate == nil && c.TLS.GetClientCertificate == nil:
		return c, errors.New("tcpfallback: Config.TLS has no certificate for this host; both ends present one (see LoadTLSConfig)")
	}
	if len(c.Name) > MaxNameBytes {
		return c, fmt.Errorf("tcpfallback: Config.Name %q is longer than %d bytes", c.Name, MaxNameBytes)
	}
	for _, n := range c.PeerNames {
		if n == "" {
			return c, errors.New("tcpfallback: Config.PeerNames holds an empty name")
		}
	}
	if c.OnFrame == nil {
		return c, errors.New("tcpfallback: Config.OnFrame is nil; every received frame goes there")
	}
	if c.MaxPayloadBytes == 0 {
		c.MaxPayloadBytes = DefaultMaxPayloadBytes
	}
	if c.MaxPayloadBytes > maxPayloadLimitBytes {
		return c, fmt.Errorf("tcpfallback: Config.MaxPayloadBytes %d exceeds the limit %d", c.MaxPayloadBytes, maxPayloadLimitBytes)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.HandshakeTimeout, DefaultHandshakeTimeout)
	def(&c.HeartbeatInterval, DefaultHeartbeatInterval)
	def(&c.HeartbeatTimeout, DefaultHeartbeatTimeout)
	def(&c.ReconnectMinDelay, DefaultReconnectMinDelay)
	def(&c.ReconnectMaxDelay, DefaultReconnectMaxDelay)
	def(&c.SendTimeout, max(DefaultSendTimeout, c.HeartbeatTimeout))
	if c.HandshakeTimeout < 0 || c.HeartbeatInterval < 0 || c.ReconnectMinDelay < 0 || c.BusyPoll < 0 || c.SendTimeout < 0 {
		return c, errors.New("tcpfallback: Config durations must not be negative")
	}
	if c.HeartbeatTimeout < minHeartbeatTimeoutIntervals*c.HeartbeatInterval {
		return c, fmt.Errorf("tcpfallback: Config.HeartbeatTimeout %v must be at least %d × HeartbeatInterval (%v)", c.HeartbeatTimeout, minHeartbeatTimeoutIntervals, c.HeartbeatInterval)
	}
	if c.ReconnectMaxDelay < c.ReconnectMinDelay {
		return c, fmt.Errorf("tcpfallback: Config.ReconnectMaxDelay %v is below ReconnectMinDelay %v", c.ReconnectMaxDelay, c.ReconnectMinDelay)
	}
	if c.ControlSocketBufferBytes == 0 {
		c.ControlSocketBufferBytes = DefaultControlSocketBufferBytes
	}
	if c.BulkSocketBufferBytes == 0 {
		c.BulkSocketBufferBytes = DefaultBulkSocketBufferBytes
	}
	if c.EventQueueLen <= 0 {
		c.EventQueueLen = DefaultEventQueueLen
	}
	if c.protocolVersion == 0 {
		c.protocolVersion = ProtocolVersion
	}
	if c.TLS != nil {
		c.TLS = c.TLS.Clone()
		if c.TLS.MinVersion < tls.VersionTLS13 {
			c.TLS.MinVersion = tls.VersionTLS13
		}
		c.TLS.ClientAuth = tls.RequireAndVerifyClientCert
		// Full 16 KiB records from the first byte: dynamic sizing starts
		// a connection with small records to speed up the first bytes
		// of web pages, which costs checkpoint streams throughput and
		// does nothing for control frames (each fits one record anyway).
		c.TLS.DynamicRecordSizingDisabled = true
	}
	return c, nil
}

func (c *Config) socketBufferBytes(l Lane) int {
	b := c.ControlSocketBufferBytes
	if l == LaneBulk {
		b = c.BulkSocketBufferBytes
	}
	return max(b, 0)
}

func (c *Config) handshakeParams(l Lane) *handshakeParams {
	p := &handshakeParams{vmID: c.VMID, name: c.Name, lane: l, maxPayload: c.MaxPayloadBytes, version: c.protocolVersion, auth: authTLS}
	if c.PSK != nil {
		p.auth = authPSK
		p.psk = c.PSK
	}
	return p
}
