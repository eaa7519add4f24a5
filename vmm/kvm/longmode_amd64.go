package kvm

// x86-64 long-mode architecture constants and encodings (Intel SDM vol. 3,
// chapters 2-4) that a VMM needs to start a guest directly in 64-bit mode:
// control-register, EFER and RFLAGS bits, page-table entry bits, and the
// encoding of GDT descriptors and of the hidden part of a flat segment.
// Where a guest's GDT, TSS and page tables lie, and which selectors it
// uses, is the VMM's own layout (vmm/layout_amd64.go; kvmprobe has its own).

// Control register and flag bits.
const (
	CR0PE = 1 << 0
	CR0MP = 1 << 1
	CR0ET = 1 << 4
	CR0NE = 1 << 5
	CR0WP = 1 << 16
	CR0PG = 1 << 31

	CR4PAE        = 1 << 5
	CR4OSFXSR     = 1 << 9
	CR4OSXMMEXCPT = 1 << 10

	EFERSCE = 1 << 0
	EFERLME = 1 << 8
	EFERLMA = 1 << 10
	EFERNXE = 1 << 11

	// RFLAGSReserved is bit 1 of RFLAGS, which is always set.
	RFLAGSReserved = 1 << 1
	// RFLAGSIOPL is the I/O privilege level field (bits 12-13).
	RFLAGSIOPL      = 3 << 12
	RFLAGSIOPLShift = 12
)

// Page-table entry bits.
const (
	PTEPresent  = 1 << 0
	PTEWrite    = 1 << 1
	PTEUser     = 1 << 2
	PTEPageSize = 1 << 7 // a 2 MiB (PD) or 1 GiB (PDPT) page
)

// HugePageBytes is the size of the 2 MiB page a PD entry with PTEPageSize
// maps.
const HugePageBytes = 2 << 20

// TSSLimit is the limit of a 64-bit TSS without an I/O permission bitmap
// (104 bytes). A TSS whose I/O map base is TSSLimit+1 has no bitmap, so
// with IOPL=0 every port access from CPL3 faults.
const TSSLimit = 0x67

// TSSIOMapBaseOff is the offset of the I/O map base in a 64-bit TSS.
const TSSIOMapBaseOff = 0x66

// Descriptor access bytes (P, DPL, S, type) of the segments a flat 64-bit
// guest needs; the A bit is the accessed bit, which the CPU would set on
// the first load (a GDT built with it matches hidden parts that have it).
const (
	AccessKernelCode = 0x9a // P, DPL0, code exec/read
	AccessKernelData = 0x92 // P, DPL0, data read/write
	AccessUserCode   = 0xfa // P, DPL3, code exec/read
	AccessUserData   = 0xf2 // P, DPL3, data read/write
	AccessAccessed   = 0x01
	AccessTSS        = 0x89 // P, 64-bit TSS (available)
	AccessTSSBusy    = 0x8b // P, 64-bit TSS (busy), what TR must hold at VM entry
)

// Descriptor flag nibbles (G, D/B, L, AVL).
const (
	FlagsCode64 = 0xa // G, L
	FlagsData   = 0xc // G, D/B
)

// SegmentDescriptor encodes an 8-byte GDT descriptor. A 64-bit TSS
// descriptor takes two slots: this one (access AccessTSS or
// AccessTSSBusy, flags 0) and then base>>32.
func SegmentDescriptor(base, limit uint32, access, flags uint8) uint64 {
	return uint64(limit&0xffff) | uint64(base&0xffffff)<<16 | uint64(access)<<40 |
		uint64(limit>>16&0xf)<<48 | uint64(flags&0xf)<<52 | uint64(base>>24)<<56
}

// FlatSegment is the hidden part of a flat 4 GiB segment loaded from
// selector sel: a 64-bit code segment if long (typ 0xb, execute/read,
// accessed) or a 32-bit data segment (typ 0x3, read/write, accessed). It
// must match the GDT descriptor of sel to pass VM-entry checks.
func FlatSegment(sel uint16, typ, dpl uint8, long bool) Segment {
	s := Segment{Base: 0, Limit: 0xffffffff, Selector: sel, Type: typ, Present: 1, DPL: dpl, S: 1, G: 1}
	if long {
		s.L = 1
	} else {
		s.DB = 1
	}
	return s
}
