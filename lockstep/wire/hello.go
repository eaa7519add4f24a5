package wire

import "encoding/binary"

// ProtocolVersion is the lockstep protocol version a node announces in Hello.
// It is separate from the frame Version: the frame can stay while the
// protocol's rules change. Version 3 added CheckpointAck: checkpoints are
// acknowledged and sent in a window, not re-sent whole on a timer.
const ProtocolVersion = 3

// Role says which side a Hello comes from.
type Role uint8

// Roles on the wire.
const (
	RolePrimary   Role = 1
	RoleSecondary Role = 2
)

func (r Role) String() string {
	switch r {
	case RolePrimary:
		return "primary"
	case RoleSecondary:
		return "secondary"
	}
	return "role?"
}

// Hello opens (or re-opens) a pairing. A secondary that wants to join sends
// it; the primary answers with its own and then a full checkpoint.
type Hello struct {
	Header
	ProtocolVersion uint16
	VMID            string
	Role            Role
}

func (*Hello) Type() Type { return TypeHello }

func (m *Hello) Append(b []byte) []byte {
	b, s := beginFrame(b, TypeHello, &m.Header)
	b = binary.LittleEndian.AppendUint16(b, m.ProtocolVersion)
	b = append(b, byte(m.Role))
	b = binary.LittleEndian.AppendUint16(b, uint16(len(m.VMID)))
	b = append(b, m.VMID...)
	return endFrame(b, s)
}

func parseHello(r *reader) Msg {
	m := &Hello{ProtocolVersion: r.u16("protocol version")}
	m.Role = Role(r.u8("role"))
	if r.err == nil && m.Role != RolePrimary && m.Role != RoleSecondary {
		r.fail("role %d is neither primary (1) nor secondary (2)", m.Role)
	}
	n := r.u16("vm id length")
	if r.err == nil && int(n) > MaxVMIDBytes {
		r.fail("vm id length %d exceeds MaxVMIDBytes %d", n, MaxVMIDBytes)
	}
	m.VMID = string(r.take(int(n), "vm id"))
	return m
}
