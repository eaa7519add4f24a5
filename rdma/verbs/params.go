package verbs

import (
	"encoding/binary"
	"fmt"
)

// The Params encoding, version 1: 56 bytes, little-endian, fixed layout.
// Everything a peer sends is checked by parseParams before use.
//
//	off size field
//	  0    4 magic    "FTVR"
//	  4    2 version  1
//	  6    2 length   56, the whole encoding
//	  8    4 qpn      the sender's RC QP number (24 bits, not 0)
//	 12    4 psn      the sender's first send PSN (24 bits)
//	 16    4 rkey     the rkey of the sender's region (REMOTE_WRITE)
//	 20    1 mtu      the sender port's active MTU (1..5: 256..4096 bytes)
//	 21    1 gidType  2 = RoCE v2 (the only kind this package speaks)
//	 22    2 reserved 0
//	 24   16 gid      the sender's RoCE v2 GID (not all zero)
//	 40    8 addr     the virtual address of the sender's region (not 0)
//	 48    8 size     the region's size: a multiple of 4096, 4096..MaxRegionSize
const (
	paramsMagic   = "FTVR"
	paramsVersion = 1
	paramsLen     = 56

	gidTypeRoCEv2 = 2

	// MaxRegionSize bounds a region, ours or the peer's: Open refuses a
	// larger one and Connect a peer that claims one, so that a hostile
	// peer cannot make us allocate and register more staging than this.
	MaxRegionSize = 1 << 30
	// pageSize is the unit regions are sized in.
	pageSize = 4096
	// maxQPN and maxPSN: QP numbers and PSNs are 24-bit on the wire.
	maxQPN = 1<<24 - 1
	maxPSN = 1<<24 - 1
)

// params is one endpoint's description, as Params encodes it.
type params struct {
	qpn, psn, rkey uint32
	mtu            uint8
	gid            [16]byte
	addr, size     uint64
}

// appendParams appends p's version 1 encoding to b.
func appendParams(b []byte, p params) []byte {
	var e [paramsLen]byte
	copy(e[0:4], paramsMagic)
	binary.LittleEndian.PutUint16(e[4:], paramsVersion)
	binary.LittleEndian.PutUint16(e[6:], paramsLen)
	binary.LittleEndian.PutUint32(e[8:], p.qpn)
	binary.LittleEndian.PutUint32(e[12:], p.psn)
	binary.LittleEndian.PutUint32(e[16:], p.rkey)
	e[20] = p.mtu
	e[21] = gidTypeRoCEv2
	copy(e[24:40], p.gid[:])
	binary.LittleEndian.PutUint64(e[40:], p.addr)
	binary.LittleEndian.PutUint64(e[48:], p.size)
	return append(b, e[:]...)
}

// parseParams decodes and checks a peer's Params. Every field is checked
// against the layout above; a failure says which field and why.
func parseParams(b []byte) (params, error) {
	var p params
	if len(b) < 8 {
		return p, fmt.Errorf("verbs: peer params are %d bytes, shorter than the 8-byte header", len(b))
	}
	if string(b[0:4]) != paramsMagic {
		return p, fmt.Errorf("verbs: peer params start with %q, not %q: the peer is not an ftvm verbs endpoint", b[0:4], paramsMagic)
	}
	if v := binary.LittleEndian.Uint16(b[4:]); v != paramsVersion {
		return p, fmt.Errorf("verbs: peer params are version %d, this build speaks only %d: run the same ftvm version on both hosts", v, paramsVersion)
	}
	if n := binary.LittleEndian.Uint16(b[6:]); n != paramsLen || len(b) != paramsLen {
		return p, fmt.Errorf("verbs: peer params say length %d and are %d bytes; version %d is exactly %d", n, len(b), paramsVersion, paramsLen)
	}
	p.qpn = binary.LittleEndian.Uint32(b[8:])
	p.psn = binary.LittleEndian.Uint32(b[12:])
	p.rkey = binary.LittleEndian.Uint32(b[16:])
	p.mtu = b[20]
	copy(p.gid[:], b[24:40])
	p.addr = binary.LittleEndian.Uint64(b[40:])
	p.size = binary.LittleEndian.Uint64(b[48:])
	switch {
	case p.qpn == 0 || p.qpn > maxQPN:
		return p, fmt.Errorf("verbs: peer QP number %#x is not a 24-bit QP number above 0", p.qpn)
	case p.psn > maxPSN:
		return p, fmt.Errorf("verbs: peer PSN %#x is wider than 24 bits", p.psn)
	case p.mtu < 1 || p.mtu > 5:
		return p, fmt.Errorf("verbs: peer MTU code %d is not one of 1..5 (256..4096 bytes)", p.mtu)
	case b[21] != gidTypeRoCEv2:
		return p, fmt.Errorf("verbs: peer GID type %d is not RoCE v2 (%d), the only kind this transport uses", b[21], gidTypeRoCEv2)
	case b[22] != 0 || b[23] != 0:
		return p, fmt.Errorf("verbs: peer params have reserved bytes 22..23 set (%#x %#x)", b[22], b[23])
	case p.gid == [16]byte{}:
		return p, fmt.Errorf("verbs: peer GID is all zero")
	case p.addr == 0:
		return p, fmt.Errorf("verbs: peer region address is 0")
	case p.size == 0 || p.size%pageSize != 0:
		return p, fmt.Errorf("verbs: peer region size %d is not a positive multiple of %d", p.size, pageSize)
	case p.size > MaxRegionSize:
		return p, fmt.Errorf("verbs: peer region size %d is over the limit of %d bytes", p.size, MaxRegionSize)
	case p.addr+p.size < p.addr:
		return p, fmt.Errorf("verbs: peer region %#x+%d wraps around the address space", p.addr, p.size)
	}
	return p, nil
}
