package wire

import "encoding/binary"

// ProtocolVersion is the lockstep protocol version a node announces in Hello.
// It is separate from the frame Version: the frame can stay while the
// protocol's rules change. Version 3 added CheckpointAck: checkpoints are
// acknowledged and sent in a window, not re-sent whole on a timer.
// Version 4 changed checkpoint-done's digest to the two-level one (see
// the package doc), so that a primary need not hash the VM's data where it
// ships it. Version 5 added resync-request's base (incremental resyncs).
// Version 6 made the VMM data's part of that digest CRC32C lanes instead
// of SHA-256 (lockstep.DataDigest), which took milliseconds of a resync's
// pause on each host: a version-5 peer would find every checkpoint's
// digest wrong, so it is refused at the hello.
const ProtocolVersion = 6

// Role is where a node stands in the protocol. It is the one role type of
// the module: a Hello carries RolePrimary or RoleSecondary (Parse refuses
// the others), and package lockstep uses all four for a node's state
// (lockstep.Role is this type). It lives here because the wire must encode
// it and wire imports nothing of lockstep.
type Role uint8

// Roles. Only RolePrimary and RoleSecondary go on the wire.
const (
	RolePrimary   Role = 1
	RoleSecondary Role = 2
	// RoleCandidate is a secondary that declared its primary dead and is
	// consuming the rest of the log while it asks the arbiter to go live.
	RoleCandidate Role = 3
	// RoleHalted never acts again.
	RoleHalted Role = 4
)

func (r Role) String() string {
	switch r {
	case RolePrimary:
		return "primary"
	case RoleSecondary:
		return "secondary"
	case RoleCandidate:
		return "candidate"
	case RoleHalted:
		return "halted"
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
