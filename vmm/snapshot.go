package vmm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// SnapshotKind says whether a snapshot holds all of memory or only the
// pages dirtied since the snapshot it is based on.
type SnapshotKind uint8

// The two kinds.
const (
	Full        SnapshotKind = 1
	Incremental SnapshotKind = 2
)

func (k SnapshotKind) String() string {
	switch k {
	case Full:
		return "full"
	case Incremental:
		return "incremental"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Snapshot is the state of a paused VM: vCPU registers, device state and
// memory. A Full snapshot starts a chain (Seq 0) and holds every non-zero
// page; an Incremental one holds the pages written since snapshot BaseSeq
// of the same chain and applies only on a VM that is at that snapshot.
//
// The encoding (MarshalBinary / UnmarshalSnapshot) is little-endian:
//
//	offset  size  field
//	0       8     magic "FTVMSNAP"
//	8       2     format version (1)
//	10      1     kind: 1 full, 2 incremental
//	11      1     flags: bit 0 = the guest had halted
//	12      4     reserved, 0
//	16      8     chain id (random, chosen by the full snapshot)
//	24      8     seq (0 for the full snapshot, +1 per increment)
//	32      8     base seq (the seq an increment applies on; 0 for full)
//	40      8     guest memory size in bytes
//	48      8     next exit index
//	56      8     guest exit code (valid when halted)
//	64      4     vCPU count (1 to snapshotMaxVCPUs)
//	68      4     device count (0 to snapshotMaxDevices)
//	72      8     page count
//	80            per vCPU:
//	                144  struct kvm_regs
//	                312  struct kvm_sregs
//	                4+n  u32 length, struct kvm_fpu   (n = 0 or 416)
//	                4+n  u32 length, struct kvm_xsave (n = 0 or 4096)
//	                4+n  u32 length, struct kvm_xcrs  (n = 0 or 392)
//	                4+n  u32 length, struct kvm_vcpu_events (n = 0 or 64)
//	                4    MSR count (up to snapshotMaxMSRs)
//	                16×  u32 index, u32 reserved 0, u64 value
//	              per device: u8 device id, u8 0, u16 0, u32 length, state
//	              page count × u64 page number (strictly increasing)
//	              page count × 4096 bytes of page data
//	end-4   4     CRC32C (Castagnoli) of every byte before it
//
// A snapshot that is truncated, has a wrong magic, version or checksum, or
// any field out of range is refused with an error that says which.
type Snapshot struct {
	Kind     SnapshotKind
	Halted   bool
	ChainID  uint64
	Seq      uint64
	BaseSeq  uint64
	MemSize  uint64
	NextExit uint64
	ExitCode uint64
	VCPUs    []VCPUState
	Devices  []DeviceState
	// PageNumbers lists the saved pages in increasing order; page i's
	// bytes are PageData[i*PageBytes:(i+1)*PageBytes].
	PageNumbers []uint64
	PageData    []byte
}

// VCPUState is one vCPU's saved registers. The blobs are the kernel's
// structs, kept opaque: the VMM restores them without reading them.
type VCPUState struct {
	Regs   Regs
	Sregs  Sregs
	FPU    []byte // struct kvm_fpu, when the host has no XSAVE
	XSAVE  []byte // struct kvm_xsave
	XCRs   []byte // struct kvm_xcrs
	Events []byte // struct kvm_vcpu_events
	MSRs   []MSR
}

// MSR is one model-specific register.
type MSR struct {
	Index uint32
	Value uint64
}

// DeviceState is one device's saved state (its own versioned encoding).
type DeviceState struct {
	Device Device
	State  []byte
}

// Format constants and decoder limits.
const (
	snapshotMagic       = "FTVMSNAP"
	snapshotVersion     = 1
	snapshotHeaderBytes = 80
	snapshotCRCBytes    = 4
	snapshotMaxVCPUs    = 64
	snapshotMaxDevices  = 16
	snapshotMaxMSRs     = 64
	// snapshotDeviceStateMaxBytes bounds one device's state.
	snapshotDeviceStateMaxBytes = 1 << 20
	snapshotFlagHalted          = 1
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrBadSnapshot is wrapped by every error about a malformed snapshot.
var ErrBadSnapshot = errors.New("bad snapshot")

func badSnapshot(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadSnapshot, fmt.Sprintf(format, args...))
}

// Pages is the number of memory pages in the snapshot.
func (s *Snapshot) Pages() int { return len(s.PageNumbers) }

// MarshalBinary encodes the snapshot in the format documented on Snapshot.
func (s *Snapshot) MarshalBinary() ([]byte, error) {
	if len(s.PageData) != len(s.PageNumbers)*PageBytes {
		return nil, fmt.Errorf("snapshot has %d page numbers but %d bytes of page data", len(s.PageNumbers), len(s.PageData))
	}
	size := snapshotHeaderBytes + len(s.PageNumbers)*(8+PageBytes) + snapshotCRCBytes
	for _, v := range s.VCPUs {
		size += kvmRegsSize + kvmSregsSize + 16 + len(v.FPU) + len(v.XSAVE) + len(v.XCRs) + len(v.Events) + 4 + 16*len(v.MSRs)
	}
	for _, d := range s.Devices {
		size += 8 + len(d.State)
	}
	b := make([]byte, 0, size)
	b = append(b, snapshotMagic...)
	b = le.AppendUint16(b, snapshotVersion)
	var flags byte
	if s.Halted {
		flags |= snapshotFlagHalted
	}
	b = append(b, byte(s.Kind), flags, 0, 0, 0, 0)
	for _, v := range []uint64{s.ChainID, s.Seq, s.BaseSeq, s.MemSize, s.NextExit, s.ExitCode} {
		b = le.AppendUint64(b, v)
	}
	b = le.AppendUint32(b, uint32(len(s.VCPUs)))
	b = le.AppendUint32(b, uint32(len(s.Devices)))
	b = le.AppendUint64(b, uint64(len(s.PageNumbers)))
	for _, v := range s.VCPUs {
		var err error
		if b, err = binary.Append(b, le, &v.Regs); err != nil {
			return nil, err
		}
		if b, err = binary.Append(b, le, &v.Sregs); err != nil {
			return nil, err
		}
		for _, blob := range [][]byte{v.FPU, v.XSAVE, v.XCRs, v.Events} {
			b = le.AppendUint32(b, uint32(len(blob)))
			b = append(b, blob...)
		}
		b = le.AppendUint32(b, uint32(len(v.MSRs)))
		for _, m := range v.MSRs {
			b = le.AppendUint32(b, m.Index)
			b = le.AppendUint32(b, 0)
			b = le.AppendUint64(b, m.Value)
		}
	}
	for _, d := range s.Devices {
		b = append(b, byte(d.Device), 0, 0, 0)
		b = le.AppendUint32(b, uint32(len(d.State)))
		b = append(b, d.State...)
	}
	for _, p := range s.PageNumbers {
		b = le.AppendUint64(b, p)
	}
	b = append(b, s.PageData...)
	return le.AppendUint32(b, crc32.Checksum(b, castagnoli)), nil
}

// snapReader walks an encoded snapshot, failing with the field's name
// when the bytes run out.
type snapReader struct {
	b   []byte
	off int
	err error
}

func (r *snapReader) take(n uint64, what string) []byte {
	if r.err != nil {
		return nil
	}
	if n > uint64(len(r.b)-r.off) {
		r.err = badSnapshot("truncated: %s needs %d bytes at offset %d, only %d remain", what, n, r.off, len(r.b)-r.off)
		return nil
	}
	p := r.b[r.off : r.off+int(n)]
	r.off += int(n)
	return p
}

func (r *snapReader) u32(what string) uint32 {
	if p := r.take(4, what); p != nil {
		return le.Uint32(p)
	}
	return 0
}

func (r *snapReader) u64(what string) uint64 {
	if p := r.take(8, what); p != nil {
		return le.Uint64(p)
	}
	return 0
}

// blob reads a u32-length-prefixed struct that must be empty or exactly
// want bytes long.
func (r *snapReader) blob(what string, want uint32) []byte {
	n := r.u32(what + " length")
	if r.err != nil {
		return nil
	}
	if n != 0 && n != want {
		r.err = badSnapshot("%s is %d bytes; it must be 0 or %d", what, n, want)
		return nil
	}
	if n == 0 {
		return nil
	}
	return bytes.Clone(r.take(uint64(n), what))
}

// UnmarshalSnapshot decodes and verifies an encoded snapshot. It checks
// the checksum before anything else, then every count and length against
// the bytes present and the format's limits. The returned snapshot's
// PageData shares b's bytes: do not modify b while it is in use.
func UnmarshalSnapshot(b []byte) (*Snapshot, error) {
	if len(b) < snapshotHeaderBytes+snapshotCRCBytes {
		return nil, badSnapshot("truncated: %d bytes, shorter than the %d-byte header and checksum", len(b), snapshotHeaderBytes+snapshotCRCBytes)
	}
	if string(b[:8]) != snapshotMagic {
		return nil, badSnapshot("magic is %q, want %q: not an ftvm snapshot", b[:8], snapshotMagic)
	}
	if v := le.Uint16(b[8:]); v != snapshotVersion {
		return nil, badSnapshot("format version %d; this VMM reads version %d", v, snapshotVersion)
	}
	body := b[:len(b)-snapshotCRCBytes]
	want := le.Uint32(b[len(b)-snapshotCRCBytes:])
	if got := crc32.Checksum(body, castagnoli); got != want {
		return nil, badSnapshot("checksum mismatch (stored %#08x, computed %#08x): the snapshot is corrupt or truncated", want, got)
	}
	r := &snapReader{b: body, off: 10}
	s := &Snapshot{}
	hdr := r.take(6, "kind and flags")
	s.Kind = SnapshotKind(hdr[0])
	if s.Kind != Full && s.Kind != Incremental {
		return nil, badSnapshot("kind is %d; want 1 (full) or 2 (incremental)", hdr[0])
	}
	if hdr[1]&^snapshotFlagHalted != 0 || hdr[2]|hdr[3]|hdr[4]|hdr[5] != 0 {
		return nil, badSnapshot("unknown flags %#x or non-zero reserved bytes", hdr[1])
	}
	s.Halted = hdr[1]&snapshotFlagHalted != 0
	s.ChainID = r.u64("chain id")
	s.Seq = r.u64("seq")
	s.BaseSeq = r.u64("base seq")
	s.MemSize = r.u64("memory size")
	s.NextExit = r.u64("next exit index")
	s.ExitCode = r.u64("exit code")
	nvcpu := r.u32("vCPU count")
	ndev := r.u32("device count")
	npages := r.u64("page count")
	if r.err != nil {
		return nil, r.err
	}
	if s.Kind == Full && (s.Seq != 0 || s.BaseSeq != 0) {
		return nil, badSnapshot("full snapshot has seq %d, base %d; want 0, 0", s.Seq, s.BaseSeq)
	}
	if s.Kind == Incremental && (s.Seq == 0 || s.BaseSeq != s.Seq-1) {
		return nil, badSnapshot("incremental snapshot has seq %d on base %d; want seq = base+1 > 0", s.Seq, s.BaseSeq)
	}
	if err := checkMemSize(s.MemSize); err != nil {
		return nil, badSnapshot("%v", err)
	}
	if nvcpu == 0 || nvcpu > snapshotMaxVCPUs {
		return nil, badSnapshot("vCPU count %d; want 1 to %d", nvcpu, snapshotMaxVCPUs)
	}
	if ndev > snapshotMaxDevices {
		return nil, badSnapshot("device count %d exceeds %d", ndev, snapshotMaxDevices)
	}
	if npages > s.MemSize/PageBytes {
		return nil, badSnapshot("page count %d exceeds the %d pages of a %d-byte memory", npages, s.MemSize/PageBytes, s.MemSize)
	}
	for i := uint32(0); i < nvcpu && r.err == nil; i++ {
		var v VCPUState
		if p := r.take(kvmRegsSize, "kvm_regs"); p != nil {
			binary.Decode(p, le, &v.Regs)
		}
		if p := r.take(kvmSregsSize, "kvm_sregs"); p != nil {
			binary.Decode(p, le, &v.Sregs)
		}
		v.FPU = r.blob("kvm_fpu", kvmFPUSize)
		v.XSAVE = r.blob("kvm_xsave", kvmXsaveSize)
		v.XCRs = r.blob("kvm_xcrs", kvmXcrsSize)
		v.Events = r.blob("kvm_vcpu_events", kvmVcpuEventsSize)
		n := r.u32("MSR count")
		if r.err == nil && n > snapshotMaxMSRs {
			return nil, badSnapshot("vCPU %d has %d MSRs; at most %d", i, n, snapshotMaxMSRs)
		}
		for j := uint32(0); j < n && r.err == nil; j++ {
			p := r.take(16, "MSR entry")
			if p == nil {
				break
			}
			if le.Uint32(p[4:]) != 0 {
				return nil, badSnapshot("MSR entry %d of vCPU %d has a non-zero reserved word", j, i)
			}
			v.MSRs = append(v.MSRs, MSR{Index: le.Uint32(p), Value: le.Uint64(p[8:])})
		}
		s.VCPUs = append(s.VCPUs, v)
	}
	seen := map[Device]bool{}
	for i := uint32(0); i < ndev && r.err == nil; i++ {
		h := r.take(8, "device header")
		if h == nil {
			break
		}
		d := Device(h[0])
		if d < DeviceConsole || d > DeviceHalt || h[1]|h[2]|h[3] != 0 {
			return nil, badSnapshot("device entry %d names unknown device %d", i, h[0])
		}
		if seen[d] {
			return nil, badSnapshot("device %s appears twice", d)
		}
		seen[d] = true
		n := le.Uint32(h[4:])
		if n > snapshotDeviceStateMaxBytes {
			return nil, badSnapshot("%s state is %d bytes; at most %d", d, n, snapshotDeviceStateMaxBytes)
		}
		s.Devices = append(s.Devices, DeviceState{Device: d, State: bytes.Clone(r.take(uint64(n), d.String()+" state"))})
	}
	if r.err != nil {
		return nil, r.err
	}
	nums := r.take(npages*8, "page numbers")
	data := r.take(npages*PageBytes, "page data")
	if r.err != nil {
		return nil, r.err
	}
	if r.off != len(body) {
		return nil, badSnapshot("%d bytes of trailing garbage before the checksum", len(body)-r.off)
	}
	s.PageNumbers = make([]uint64, npages)
	for i := range s.PageNumbers {
		p := le.Uint64(nums[i*8:])
		if p >= s.MemSize/PageBytes {
			return nil, badSnapshot("page %d lies beyond the %d-byte memory", p, s.MemSize)
		}
		if i > 0 && p <= s.PageNumbers[i-1] {
			return nil, badSnapshot("page numbers are not strictly increasing (%d after %d)", p, s.PageNumbers[i-1])
		}
		s.PageNumbers[i] = p
	}
	s.PageData = data // aliases b: a 40 MB snapshot is not copied twice
	return s, nil
}
