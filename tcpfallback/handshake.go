package tcpfallback

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
)

// ProtocolVersion is the version of the frame layout and hello exchange.
// Peers must speak the same one; there is no negotiation, because a
// replicated VM must run the same release on both hosts anyway. Version 2
// added the host name to the hello; version 3 the link-setup frame (type
// 4), which an older peer would take for garbage.
const ProtocolVersion = 3

// MaxVMIDBytes bounds the length of a VM id.
const MaxVMIDBytes = 64

// MaxNameBytes bounds the length of a host name (Config.Name).
const MaxNameBytes = 64

// MinPSKBytes is the shortest pre-shared key accepted: 128 bits.
const MinPSKBytes = 16

const (
	helloMagic       = "FTVM"
	nonceBytes       = 32
	macBytes         = sha256.Size
	maxReasonBytes   = 512
	helloFixedBytes  = 4 + 2 + 1 + 1 + 4 + nonceBytes + 1
	helloMaxBytes    = helloFixedBytes + MaxVMIDBytes + 1 + MaxNameBytes
	doneFixedBytes   = 1 + macBytes
	handshakeMaxBody = helloMaxBytes + doneFixedBytes + maxReasonBytes
)

// authMode says how the peers prove who they are. It travels in the hello so
// that a mismatch is named instead of showing up as garbage.
type authMode uint8

const (
	authTLS authMode = 1
	authPSK authMode = 2
)

func (a authMode) String() string {
	switch a {
	case authTLS:
		return "TLS"
	case authPSK:
		return "pre-shared key"
	}
	return fmt.Sprintf("auth(%d)", uint8(a))
}

// hello is what each side says about itself when a connection opens.
type hello struct {
	version    uint16
	lane       Lane
	auth       authMode
	maxPayload uint32 // the largest frame payload this side accepts
	nonce      [nonceBytes]byte
	vmID       string
	name       string // the sender's Config.Name; under PSK, bound into its proof
}

func (h *hello) marshal() []byte {
	b := make([]byte, 0, helloMaxBytes)
	b = append(b, helloMagic...)
	b = binary.LittleEndian.AppendUint16(b, h.version)
	b = append(b, byte(h.lane), byte(h.auth))
	b = binary.LittleEndian.AppendUint32(b, h.maxPayload)
	b = append(b, h.nonce[:]...)
	b = append(b, byte(len(h.vmID)))
	b = append(b, h.vmID...)
	b = append(b, byte(len(h.name)))
	return append(b, h.name...)
}

func parseHello(b []byte) (hello, error) {
	var h hello
	if len(b) < helloFixedBytes || string(b[0:4]) != helloMagic {
		return h, fmt.Errorf("hello does not start with %q (got % x): not an ftvm transport peer", helloMagic, b[:min(len(b), 8)])
	}
	h.version = binary.LittleEndian.Uint16(b[4:6])
	h.lane = Lane(b[6])
	h.auth = authMode(b[7])
	h.maxPayload = binary.LittleEndian.Uint32(b[8:12])
	copy(h.nonce[:], b[12:12+nonceBytes])
	if h.version != ProtocolVersion {
		// The rest of another version's hello may be laid out
		// otherwise: leave it, so that the version mismatch is named.
		return h, nil
	}
	n := int(b[helloFixedBytes-1])
	if n > MaxVMIDBytes || len(b) < helloFixedBytes+n+1 {
		return h, fmt.Errorf("hello has a malformed VM id field (length byte %d, %d bytes follow)", n, len(b)-helloFixedBytes)
	}
	h.vmID = string(b[helloFixedBytes : helloFixedBytes+n])
	rest := b[helloFixedBytes+n:]
	if m := int(rest[0]); m > MaxNameBytes || len(rest) != 1+m {
		return h, fmt.Errorf("hello has a malformed host name field (length byte %d, %d bytes follow)", m, len(rest)-1)
	}
	h.name = string(rest[1:])
	return h, nil
}

// verdict is the last word of each side: accepted, or refused with a
// reason, and whether the refusal is for now only (another peer holds the
// lanes) so that trying again later may succeed.
type verdict struct {
	ok     bool
	retry  bool
	mac    [macBytes]byte
	reason string
}

// Verdict codes, the first byte of a hello-done.
const (
	verdictOK      = 0
	verdictRefused = 1
	verdictBusy    = 2 // refused for now: try again later
)

func (v *verdict) marshal() []byte {
	b := make([]byte, 0, doneFixedBytes+len(v.reason))
	switch {
	case v.ok:
		b = append(b, verdictOK)
	case v.retry:
		b = append(b, verdictBusy)
	default:
		b = append(b, verdictRefused)
	}
	b = append(b, v.mac[:]...)
	r := v.reason
	if len(r) > maxReasonBytes {
		r = r[:maxReasonBytes]
	}
	return append(b, r...)
}

func parseVerdict(b []byte) (verdict, error) {
	var v verdict
	if len(b) < doneFixedBytes || b[0] > verdictBusy || len(b) > doneFixedBytes+maxReasonBytes {
		return v, fmt.Errorf("malformed hello-done (%d bytes)", len(b))
	}
	v.ok = b[0] == verdictOK
	v.retry = b[0] == verdictBusy
	copy(v.mac[:], b[1:doneFixedBytes])
	v.reason = string(b[doneFixedBytes:])
	return v, nil
}

// refusedError is a set-up refusal; Is(ErrRefused) holds unless it is for
// now only (retry).
type refusedError struct {
	byPeer bool // the peer refused us; otherwise we refused the peer
	retry  bool // another peer holds the lanes: trying again later may work
	reason string
}

func (e *refusedError) Error() string {
	if e.byPeer {
		return "refused by the peer: " + e.reason
	}
	return "refused: " + e.reason
}

func (e *refusedError) Is(target error) bool { return target == ErrRefused && !e.retry }

// garbageError: what arrived during set-up was not a valid ftvm frame.
type garbageError struct{ frame *FrameError }

func (e *garbageError) Error() string {
	return "set-up message is not a valid ftvm frame (" + e.frame.describe() + "): the peer is not an ftvm transport of this version, or the stream is corrupt"
}

func (e *garbageError) Unwrap() error { return e.frame }

// handshakeParams is what one side brings to a connection set-up.
type handshakeParams struct {
	vmID       string
	name       string // this host's Config.Name
	lane       Lane   // the dialer names it; the listener learns it
	auth       authMode
	psk        []byte
	maxPayload uint32
	version    uint16 // ProtocolVersion, other values only in tests
	// checkPeer, if set, judges the peer once its hello is in: it gets
	// the name the hello carries (authenticated by the PSK proof; under
	// TLS the certificate speaks instead, and the caller's closure
	// looks at that) and returns why the peer is not acceptable, or "",
	// and whether that may change (retry: another peer holds the lanes).
	checkPeer func(helloName string) (reason string, retry bool)
}

// hsConn reads and writes the handshake frames on one connection.
type hsConn struct {
	c        net.Conn
	buf      []byte
	r, w     int
	recvSeq  uint32
	sendSeq  uint32
	laneHint Lane
}

func (h *hsConn) send(typ Type, payload []byte) error {
	b := appendFrame(nil, typ, 0, h.sendSeq, payload)
	h.sendSeq++
	_, err := h.c.Write(b)
	return err
}

func (h *hsConn) recv(want Type) ([]byte, error) {
	for {
		hdr, payload, n, err := parseFrame(h.buf[h.r:h.w], handshakeMaxBody, h.laneHint, h.recvSeq, true)
		if err != nil {
			var fe *FrameError
			if errors.As(err, &fe) {
				return nil, &garbageError{frame: fe}
			}
			return nil, err
		}
		if n > 0 {
			h.r += n
			h.recvSeq++
			if hdr.typ != want {
				return nil, fmt.Errorf("expected %s during set-up, got %s", want, hdr.typ)
			}
			return payload, nil
		}
		if h.w == len(h.buf) {
			return nil, fmt.Errorf("set-up message larger than %d bytes", len(h.buf))
		}
		m, err := h.c.Read(h.buf[h.w:])
		h.w += m
		if err != nil && m == 0 {
			if errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("peer closed the connection during set-up, waiting for %s (wrong address, a listener using TLS while this host uses a pre-shared key or the reverse, or the peer refused us without saying why)", want)
			}
			return nil, fmt.Errorf("reading %s during set-up: %w", want, err)
		}
	}
}

// leftover returns bytes read past the handshake: the first frames of the
// data phase, which the lane reader must see first.
func (h *hsConn) leftover() []byte { return h.buf[h.r:h.w] }

func newHSConn(c net.Conn, lane Lane) *hsConn {
	// Room for the handshake plus the frames a fast peer may send right
	// after it (heartbeats); the rest stays in the socket.
	return &hsConn{c: c, buf: make([]byte, 2*(HeaderBytes+handshakeMaxBody)), laneHint: lane}
}

func newNonce() ([nonceBytes]byte, error) {
	var n [nonceBytes]byte
	_, err := rand.Read(n[:])
	return n, err
}

// mac proves knowledge of the PSK bound to both hellos (so to both fresh
// nonces). The label differs per direction so that one side's proof can
// never be reflected back as the other's.
func mac(psk []byte, label string, dialerHello, listenerHello []byte) [macBytes]byte {
	m := hmac.New(sha256.New, psk)
	m.Write([]byte(label))
	m.Write(dialerHello)
	m.Write(listenerHello)
	var out [macBytes]byte
	copy(out[:], m.Sum(nil))
	return out
}

const (
	macLabelDialer   = "ftvm tcpfallback v2 dialer proof"
	macLabelListener = "ftvm tcpfallback v2 listener proof"
)

// checkPeerHello returns why a peer's hello is unacceptable, or "".
func checkPeerHello(p hello, my *handshakeParams, wantLane bool) string {
	switch {
	case p.version != my.version:
		return fmt.Sprintf("protocol version mismatch: peer speaks %d, this host speaks %d; run the same ftvm release on both hosts", p.version, my.version)
	case p.vmID != my.vmID:
		return fmt.Sprintf("VM id mismatch: peer protects %q, this host protects %q; check the VM id on both hosts", p.vmID, my.vmID)
	case p.auth != my.auth:
		return fmt.Sprintf("authentication mode mismatch: peer uses %s, this host uses %s", p.auth, my.auth)
	case wantLane && p.lane != LaneControl && p.lane != LaneBulk:
		return fmt.Sprintf("unknown lane %d", p.lane)
	case p.maxPayload < 1 || p.maxPayload > maxPayloadLimitBytes:
		return fmt.Sprintf("peer's maximum payload %d is outside 1..%d", p.maxPayload, maxPayloadLimitBytes)
	}
	return ""
}

// handshakeResult is what a completed set-up yields.
type handshakeResult struct {
	lane           Lane
	peerMaxPayload uint32
	leftover       []byte
}

// dialerHandshake runs the dialer's side on an established (and, for TLS,
// already handshaken) connection. The caller sets the deadline.
//
//	dialer → listener  hello(dialer)
//	listener → dialer  hello(listener)
//	dialer → listener  hello-done(dialer's verdict on the listener's hello, dialer's PSK proof)
//	listener → dialer  hello-done(listener's verdict on all of it, listener's PSK proof)
//
// Nobody closes with unread data pending (which would turn the close into a
// reset that can eat the refusal), so each refusal reaches the other side.
func dialerHandshake(c net.Conn, p *handshakeParams) (handshakeResult, error) {
	hs := newHSConn(c, p.lane)
	nonce, err := newNonce()
	if err != nil {
		return handshakeResult{}, err
	}
	mine := hello{version: p.version, lane: p.lane, auth: p.auth, maxPayload: p.maxPayload, nonce: nonce, vmID: p.vmID, name: p.name}
	myBytes := mine.marshal()
	if err := hs.send(TypeHello, myBytes); err != nil {
		return handshakeResult{}, fmt.Errorf("sending hello: %w", err)
	}
	peerBytes, err := hs.recv(TypeHello)
	if err != nil {
		return handshakeResult{}, err
	}
	peer, perr := parseHello(peerBytes)
	var v verdict
	reason := ""
	if perr != nil {
		reason = perr.Error()
	} else if reason = checkPeerHello(peer, p, false); reason == "" && peer.lane != p.lane {
		reason = fmt.Sprintf("peer answered for lane %s, asked for %s", peer.lane, p.lane)
	} else if reason == "" && p.checkPeer != nil {
		// Under PSK the name is only claimed so far; the listener's
		// proof below covers it.
		reason, _ = p.checkPeer(peer.name)
	}
	v.ok = reason == ""
	v.reason = reason
	if p.auth == authPSK {
		v.mac = mac(p.psk, macLabelDialer, myBytes, peerBytes)
	}
	if err := hs.send(TypeHelloDone, v.marshal()); err != nil {
		return handshakeResult{}, fmt.Errorf("sending hello-done: %w", err)
	}
	if !v.ok {
		return handshakeResult{}, &refusedError{reason: reason}
	}
	doneBytes, err := hs.recv(TypeHelloDone)
	if err != nil {
		return handshakeResult{}, err
	}
	peerV, err := parseVerdict(doneBytes)
	if err != nil {
		return handshakeResult{}, err
	}
	if !peerV.ok {
		return handshakeResult{}, &refusedError{byPeer: true, retry: peerV.retry, reason: peerV.reason}
	}
	if p.auth == authPSK {
		want := mac(p.psk, macLabelListener, myBytes, peerBytes)
		if !hmac.Equal(want[:], peerV.mac[:]) {
			return handshakeResult{}, &refusedError{reason: "the listener failed to prove it holds the pre-shared key; check the key on both hosts"}
		}
	}
	return handshakeResult{lane: p.lane, peerMaxPayload: peer.maxPayload, leftover: hs.leftover()}, nil
}

// listenerHandshake runs the listener's side. p.lane is ignored; the lane is
// what the dialer asks for.
func listenerHandshake(c net.Conn, p *handshakeParams) (handshakeResult, error) {
	hs := newHSConn(c, LaneControl)
	peerBytes, err := hs.recv(TypeHello)
	if err != nil {
		return handshakeResult{}, err
	}
	peer, perr := parseHello(peerBytes)
	if perr != nil {
		// Not an ftvm peer, or one too different to talk to: say so
		// once and drop it.
		return handshakeResult{}, &refusedError{reason: perr.Error()}
	}
	nonce, err := newNonce()
	if err != nil {
		return handshakeResult{}, err
	}
	mine := hello{version: p.version, lane: peer.lane, auth: p.auth, maxPayload: p.maxPayload, nonce: nonce, vmID: p.vmID, name: p.name}
	myBytes := mine.marshal()
	if err := hs.send(TypeHello, myBytes); err != nil {
		return handshakeResult{}, fmt.Errorf("sending hello: %w", err)
	}
	hs.laneHint = peer.lane
	doneBytes, err := hs.recv(TypeHelloDone)
	if err != nil {
		return handshakeResult{}, err
	}
	peerV, err := parseVerdict(doneBytes)
	if err != nil {
		return handshakeResult{}, err
	}
	if !peerV.ok {
		return handshakeResult{}, &refusedError{byPeer: true, reason: peerV.reason}
	}
	reason := checkPeerHello(peer, p, true)
	if reason == "" && p.auth == authPSK {
		want := mac(p.psk, macLabelDialer, peerBytes, myBytes)
		if !hmac.Equal(want[:], peerV.mac[:]) {
			reason = "pre-shared key proof does not match; check the key on both hosts"
		}
	}
	retry := false
	if reason == "" && p.checkPeer != nil {
		reason, retry = p.checkPeer(peer.name) // the proof above covers the name
	}
	v := verdict{ok: reason == "", retry: retry, reason: reason}
	if v.ok && p.auth == authPSK {
		v.mac = mac(p.psk, macLabelListener, peerBytes, myBytes)
	}
	if err := hs.send(TypeHelloDone, v.marshal()); err != nil {
		return handshakeResult{}, fmt.Errorf("sending hello-done: %w", err)
	}
	if !v.ok {
		return handshakeResult{}, &refusedError{retry: retry, reason: reason}
	}
	return handshakeResult{lane: peer.lane, peerMaxPayload: peer.maxPayload, leftover: hs.leftover()}, nil
}
