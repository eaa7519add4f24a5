package rdma

import (
	"encoding/binary"
	"fmt"
)

// The link-setup messages (transport.TypeLinkSetup frames on the TCP
// control lane); doc.go lays them out.
const (
	setupParams = 1 // my endpoint: generation, provider, ring size, Params
	setupReady  = 2 // I connected my endpoint to yours
	setupFail   = 3 // I could not (or will not) connect to yours: stay on TCP
	setupSwitch = 4 // every control frame I send after this one goes into your ring

	setupVersion     = 1
	setupHeaderBytes = 12
	maxProviderName  = 32
	maxParamsBytes   = 64 << 10
	maxReasonBytes   = 512
)

type setupMsg struct {
	kind      uint8
	toGen     uint32 // the receiver's endpoint generation (0 in params)
	fromGen   uint32 // the sender's endpoint generation (0: none)
	provider  string // params
	ringBytes uint32 // params
	params    []byte // params: the endpoint's Params
	reason    string // fail
	seq       uint32 // the TCP frame's sequence number (switch)
}

func (m *setupMsg) append(b []byte) []byte {
	var h [setupHeaderBytes]byte
	h[0], h[1] = m.kind, setupVersion
	binary.LittleEndian.PutUint32(h[4:], m.toGen)
	binary.LittleEndian.PutUint32(h[8:], m.fromGen)
	b = append(b, h[:]...)
	switch m.kind {
	case setupParams:
		b = append(b, byte(len(m.provider)))
		b = append(b, m.provider...)
		b = binary.LittleEndian.AppendUint32(b, m.ringBytes)
		b = append(b, m.params...)
	case setupFail:
		r := m.reason
		if len(r) > maxReasonBytes {
			r = r[:maxReasonBytes]
		}
		b = append(b, r...)
	}
	return b
}

// parseSetup checks every field of a peer's set-up message; the payload
// is copied, since the frame's is only lent.
func parseSetup(b []byte) (setupMsg, error) {
	var m setupMsg
	if len(b) < setupHeaderBytes {
		return m, fmt.Errorf("rdma: a link-setup message of %d bytes is shorter than its %d-byte header", len(b), setupHeaderBytes)
	}
	if b[1] != setupVersion {
		return m, fmt.Errorf("rdma: link-setup version %d, this host speaks %d", b[1], setupVersion)
	}
	if b[2] != 0 || b[3] != 0 {
		return m, fmt.Errorf("rdma: link-setup header bytes 2..3 are % x, not zero", b[2:4])
	}
	m.kind = b[0]
	m.toGen = binary.LittleEndian.Uint32(b[4:])
	m.fromGen = binary.LittleEndian.Uint32(b[8:])
	rest := b[setupHeaderBytes:]
	switch m.kind {
	case setupParams:
		if len(rest) < 1 || int(rest[0]) > maxProviderName || len(rest) < 1+int(rest[0])+4 {
			return m, fmt.Errorf("rdma: link-setup params of %d bytes are truncated or name a provider over %d bytes", len(rest), maxProviderName)
		}
		n := int(rest[0])
		m.provider = string(rest[1 : 1+n])
		m.ringBytes = binary.LittleEndian.Uint32(rest[1+n:])
		p := rest[1+n+4:]
		if len(p) == 0 || len(p) > maxParamsBytes {
			return m, fmt.Errorf("rdma: the peer's endpoint parameters are %d bytes (1..%d)", len(p), maxParamsBytes)
		}
		m.params = append([]byte(nil), p...)
		if m.fromGen == 0 {
			return m, fmt.Errorf("rdma: link-setup params without a generation")
		}
	case setupFail:
		if len(rest) > maxReasonBytes {
			rest = rest[:maxReasonBytes]
		}
		m.reason = string(rest)
	case setupReady, setupSwitch:
		if len(rest) != 0 {
			return m, fmt.Errorf("rdma: link-setup %d message carries %d unexpected bytes", m.kind, len(rest))
		}
	default:
		return m, fmt.Errorf("rdma: unknown link-setup message kind %d", m.kind)
	}
	return m, nil
}
