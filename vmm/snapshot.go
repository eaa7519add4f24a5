package vmm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/ftvm/ftvm/vmm/kvm"
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

// Snapshot is the state of a paused VM: vCPU registers, device state,
// memory and the disk's contents (or, when Live, the memory and disk of
// a running one, below). A Full snapshot starts a chain (Seq 0)
// and holds every non-zero page of memory and every non-zero chunk of the
// disk; an Incremental one holds the pages written since snapshot BaseSeq
// of the same chain and the disk chunks written since then, and applies
// only on a VM that is at that snapshot.
//
// The disk is saved as the file is on the backend: its durable content.
// Writes the hook holds (Exit.Hold, not yet released) are not in it, even
// though the guest already reads them back: they are outputs, which the
// caller carries beside the snapshot and releases (Output.Release on this
// host, Machine.Deliver on another) on whichever host goes on. A write
// released after the snapshot lands in the next increment.
//
// The encoding (MarshalBinary / UnmarshalSnapshot) is little-endian:
//
//	offset  size  field
//	0       8     magic "FTVMSNAP"
//	8       2     format version (2)
//	10      1     kind: 1 full, 2 incremental
//	11      1     flags: bit 0 = the guest had halted;
//	                     bit 1 = the disk's contents are omitted
//	                     (Config.DiskSharedStorage; no disk chunks follow);
//	                     bit 2 = live (SnapshotLive): taken while the
//	                     guest ran, so pages and chunks may be torn, and
//	                     it holds no vCPU or device state: vCPU count,
//	                     device count, next exit index and exit code are
//	                     0 and bit 0 is clear
//	12      4     reserved, 0
//	16      8     chain id (random, chosen by the full snapshot)
//	24      8     seq (0 for the full snapshot, +1 per increment)
//	32      8     base seq (the seq an increment applies on; 0 for full)
//	40      8     guest memory size in bytes
//	48      8     next exit index
//	56      8     guest exit code (valid when halted)
//	64      4     vCPU count (1 to snapshotMaxVCPUs; 0 when live)
//	68      4     device count (0 to snapshotMaxDevices; 0 when live)
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
//	              disk section:
//	                8    disk size in bytes (a multiple of 512; 0: no disk)
//	                8    chunk count (up to the disk's ceil(size / 4096)
//	                     chunks; 0 when bit 1 of flags is set)
//	                8×   chunk count × u64 chunk number (strictly
//	                     increasing, each below ceil(size / 4096))
//	                d    chunk data, in chunk order: chunk c is bytes
//	                     [c×4096, min((c+1)×4096, size)) of the disk, so
//	                     d = 4096 × chunk count, less what the disk's last
//	                     chunk lacks of 4096 when it is listed (a size
//	                     that is not a multiple of 4096)
//	end-4   4     CRC32C (Castagnoli) of every byte before it
//
// A snapshot that is truncated, has a wrong magic, version or checksum, or
// any field out of range is refused with an error that says which.
// Snapshots travel between live hosts of one build and are never stored
// for long, so a VMM reads only its own format version. (The live flag
// came without a new version: a reader without it refuses the bit as an
// unknown flag, and a live snapshot, having no vCPU, would be refused
// anyway.)
//
// A live snapshot (Live, from Machine.SnapshotLive) is one step of a
// pre-copy: it takes its place in the chain like any other, but its
// memory and disk were copied while the guest changed them, and it has no
// registers, so a VM restored from it runs only once a snapshot taken
// while paused has been applied on top (the increment that follows it
// holds every page and chunk written since the live copy began).
type Snapshot struct {
	Kind   SnapshotKind
	Halted bool
	// Live says the snapshot was taken while the VM ran (SnapshotLive):
	// pages and disk chunks may be torn, and VCPUs and Devices are
	// empty. It is restored like any snapshot, but leaves the VM
	// unrunnable until a non-live one is applied on top.
	Live     bool
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
	// DiskBytes is the size of the VM's disk (0: it has none).
	DiskBytes uint64
	// DiskOmitted says the VM was configured with DiskSharedStorage: the
	// disk's contents are not in the snapshot (DiskChunks is empty), and
	// only a VM on the same shared disk may restore it.
	DiskOmitted bool
	// DiskChunks lists the saved disk chunks (DiskChunkBytes each) in
	// increasing order; chunk i's bytes start at
	// DiskData[i*DiskChunkBytes], and all but the disk's last chunk are
	// DiskChunkBytes long (DiskChunk returns them).
	DiskChunks []uint64
	DiskData   []byte

	// encoded, when set, is a buffer of the snapshot's encoded size in
	// which PageData lies at its place in the encoding (placePages):
	// MarshalBinary writes the rest around the pages and returns it,
	// rather than copying the pages again into new memory (which, on
	// these PVM hosts, costs a page fault per 4 KiB: 4 ms for 1,000
	// pages, most of an incremental resync's pause).
	encoded []byte
	// placedCRC is the CRC32C of PageData as placePages copied it:
	// PageData must not change while it lies in encoded.
	placedCRC uint32
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
	snapshotVersion     = 2
	snapshotHeaderBytes = 80
	snapshotCRCBytes    = 4
	snapshotMaxVCPUs    = 64
	snapshotMaxDevices  = 16
	snapshotMaxMSRs     = 64
	// snapshotDeviceStateMaxBytes bounds one device's state.
	snapshotDeviceStateMaxBytes = 1 << 20
	snapshotFlagHalted          = 1
	snapshotFlagDiskOmitted     = 2
	snapshotFlagLive            = 4
	// snapshotDiskHeaderBytes is the disk section's size and chunk count.
	snapshotDiskHeaderBytes = 16
)

// DiskChunkBytes is the unit in which snapshots save the disk: 8 sectors,
// the size of a page, so that a small write costs one chunk.
const DiskChunkBytes = 4096

// diskChunks is the number of chunks of a disk of size bytes (the last
// one may be partial).
func diskChunks(size uint64) uint64 {
	return size/DiskChunkBytes + min(size%DiskChunkBytes, 1)
}

// diskChunkLen is the length of chunk c of a disk of size bytes: all are
// DiskChunkBytes but the last, which holds what is left.
func diskChunkLen(size, c uint64) uint64 {
	return min(DiskChunkBytes, size-c*DiskChunkBytes)
}

// diskDataBytes is the length of the data of chunks (valid and increasing)
// on a disk of size bytes: only the last chunk listed can be the disk's
// partial one.
func diskDataBytes(size uint64, chunks []uint64) uint64 {
	if len(chunks) == 0 {
		return 0
	}
	last := chunks[len(chunks)-1]
	return uint64(len(chunks)-1)*DiskChunkBytes + diskChunkLen(size, last)
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrBadSnapshot is wrapped by every error about a malformed snapshot.
var ErrBadSnapshot = errors.New("bad snapshot")

func badSnapshot(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadSnapshot, fmt.Sprintf(format, args...))
}

// Pages is the number of memory pages in the snapshot.
func (s *Snapshot) Pages() int { return len(s.PageNumbers) }

// Chunks is the number of disk chunks in the snapshot.
func (s *Snapshot) Chunks() int { return len(s.DiskChunks) }

// DiskChunk returns the number and the bytes of the i-th saved disk chunk
// (the bytes alias DiskData).
func (s *Snapshot) DiskChunk(i int) (chunk uint64, data []byte) {
	c := s.DiskChunks[i]
	off := uint64(i) * DiskChunkBytes
	return c, s.DiskData[off : off+diskChunkLen(s.DiskBytes, c)]
}

// checkDisk checks the disk section of a snapshot built in memory, where
// the decoder has not: chunk numbers in range and increasing, data of
// the right length.
func (s *Snapshot) checkDisk() error {
	if s.DiskBytes%BlockSectorBytes != 0 {
		return fmt.Errorf("snapshot disk size %d is not a multiple of the %d-byte sector", s.DiskBytes, BlockSectorBytes)
	}
	if s.DiskOmitted && len(s.DiskChunks) > 0 {
		return fmt.Errorf("snapshot says its disk contents are omitted but holds %d disk chunks", len(s.DiskChunks))
	}
	n := diskChunks(s.DiskBytes)
	for i, c := range s.DiskChunks {
		if c >= n {
			return fmt.Errorf("snapshot disk chunk %d lies beyond the %d-byte disk", c, s.DiskBytes)
		}
		if i > 0 && c <= s.DiskChunks[i-1] {
			return fmt.Errorf("snapshot disk chunks are not strictly increasing (%d after %d)", c, s.DiskChunks[i-1])
		}
	}
	if want := diskDataBytes(s.DiskBytes, s.DiskChunks); uint64(len(s.DiskData)) != want {
		return fmt.Errorf("snapshot has %d disk chunks but %d bytes of disk data; they need %d", len(s.DiskChunks), len(s.DiskData), want)
	}
	return nil
}

// checkState checks that a snapshot built in memory carries the vCPU and
// device state its kind needs: none when live, a vCPU at least otherwise
// (the decoder refuses the rest).
func (s *Snapshot) checkState() error {
	if s.Live {
		if len(s.VCPUs) != 0 || len(s.Devices) != 0 || s.Halted || s.NextExit != 0 || s.ExitCode != 0 {
			return fmt.Errorf("a live snapshot carries no vCPU or device state, but this one has %d vCPUs, %d devices, halted %v, next exit %d, exit code %d", len(s.VCPUs), len(s.Devices), s.Halted, s.NextExit, s.ExitCode)
		}
		return nil
	}
	if len(s.VCPUs) == 0 {
		return fmt.Errorf("snapshot has no vCPU state and is not live")
	}
	return nil
}

// appendDiskSection encodes the disk section (the layout is on Snapshot).
func appendDiskSection(b []byte, s *Snapshot) []byte {
	b = le.AppendUint64(b, s.DiskBytes)
	b = le.AppendUint64(b, uint64(len(s.DiskChunks)))
	for _, c := range s.DiskChunks {
		b = le.AppendUint64(b, c)
	}
	return append(b, s.DiskData...)
}

// MarshalBinary encodes the snapshot in the format documented on Snapshot.
// For a snapshot from SnapshotCovering the result is the buffer its
// PageData lies in: do not modify it while the snapshot is in use (the
// pages' checksum was taken as they were copied there).
func (s *Snapshot) MarshalBinary() ([]byte, error) {
	if len(s.PageData) != len(s.PageNumbers)*PageBytes {
		return nil, fmt.Errorf("snapshot has %d page numbers but %d bytes of page data", len(s.PageNumbers), len(s.PageData))
	}
	if err := s.checkDisk(); err != nil {
		return nil, err
	}
	if err := s.checkState(); err != nil {
		return nil, err
	}
	prefix := s.prefixBytes()
	size := s.encodedBytes(prefix)
	var b []byte
	inPlace := len(s.encoded) == size && len(s.PageData) > 0 && &s.encoded[prefix] == &s.PageData[0]
	if inPlace {
		b = s.encoded[:0]
	} else {
		b = make([]byte, 0, size)
	}
	b, err := s.appendPrefix(b)
	if err != nil {
		return nil, err
	}
	if len(b) != prefix {
		return nil, fmt.Errorf("snapshot encoding: %d bytes before the pages, expected %d (a VMM bug)", len(b), prefix)
	}
	if inPlace {
		// The pages are there already, and so is their checksum.
		crc := crc32cCombine(crc32.Checksum(b, castagnoli), s.placedCRC, len(s.PageData))
		b = appendDiskSection(b[:prefix+len(s.PageData)], s)
		crc = crc32.Update(crc, castagnoli, b[prefix+len(s.PageData):])
		return le.AppendUint32(b, crc), nil
	}
	b = append(b, s.PageData...)
	b = appendDiskSection(b, s)
	return le.AppendUint32(b, crc32.Checksum(b, castagnoli)), nil
}

// prefixBytes is the length of the encoding before the page data: the
// header, vCPUs, devices and page numbers.
func (s *Snapshot) prefixBytes() int {
	size := snapshotHeaderBytes + len(s.PageNumbers)*8
	for _, v := range s.VCPUs {
		size += kvm.RegsSize + kvm.SregsSize + 16 + len(v.FPU) + len(v.XSAVE) + len(v.XCRs) + len(v.Events) + 4 + 16*len(v.MSRs)
	}
	for _, d := range s.Devices {
		size += 8 + len(d.State)
	}
	return size
}

// encodedBytes is the length of the whole encoding, given prefixBytes.
func (s *Snapshot) encodedBytes(prefix int) int {
	return prefix + len(s.PageNumbers)*PageBytes + snapshotDiskHeaderBytes + len(s.DiskChunks)*8 + len(s.DiskData) + snapshotCRCBytes
}

// placePages copies the pages listed in PageNumbers out of mem into a
// buffer of the encoding's size, at their place in it, so that
// MarshalBinary need not copy them again: sp's spare if it is large
// enough (nil: a new buffer). Everything else in s must be final.
func (s *Snapshot) placePages(mem *Memory, sp *spareBuffer) {
	prefix := s.prefixBytes()
	if n := s.encodedBytes(prefix); sp != nil {
		s.encoded = sp.take(n)
	} else {
		s.encoded = make([]byte, n)
	}
	n := len(s.PageNumbers) * PageBytes
	s.PageData = s.encoded[prefix : prefix+n : prefix+n]
	// Checksummed batch by batch as they are copied, while the batch is
	// in the cache: MarshalBinary combines the checksum with the rest's
	// rather than reading the pages again.
	out, pages := s.PageData, s.PageNumbers
	var crc uint32
	for len(pages) > 0 {
		k := min(len(pages), copyBatchPages)
		mem.copyPagesInto(out[:k*PageBytes], pages[:k])
		crc = crc32.Update(crc, castagnoli, out[:k*PageBytes])
		out, pages = out[k*PageBytes:], pages[k:]
	}
	s.placedCRC = crc
}

// appendPrefix encodes the header, vCPUs, devices and page numbers.
func (s *Snapshot) appendPrefix(b []byte) ([]byte, error) {
	b = append(b, snapshotMagic...)
	b = le.AppendUint16(b, snapshotVersion)
	var flags byte
	if s.Halted {
		flags |= snapshotFlagHalted
	}
	if s.DiskOmitted {
		flags |= snapshotFlagDiskOmitted
	}
	if s.Live {
		flags |= snapshotFlagLive
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
	return b, nil
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
// PageData and DiskData share b's bytes: do not modify b while it is in
// use.
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
	if hdr[1]&^(snapshotFlagHalted|snapshotFlagDiskOmitted|snapshotFlagLive) != 0 || hdr[2]|hdr[3]|hdr[4]|hdr[5] != 0 {
		return nil, badSnapshot("unknown flags %#x or non-zero reserved bytes", hdr[1])
	}
	s.Halted = hdr[1]&snapshotFlagHalted != 0
	s.DiskOmitted = hdr[1]&snapshotFlagDiskOmitted != 0
	s.Live = hdr[1]&snapshotFlagLive != 0
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
	if s.Live {
		// A live snapshot was copied while the vCPU ran: whatever state
		// it claimed would not be the state of its memory.
		if nvcpu != 0 || ndev != 0 || s.Halted || s.NextExit != 0 || s.ExitCode != 0 {
			return nil, badSnapshot("live snapshot has %d vCPUs, %d devices, halted %v, next exit %d, exit code %d; a live snapshot carries no vCPU or device state (all 0)", nvcpu, ndev, s.Halted, s.NextExit, s.ExitCode)
		}
	} else if nvcpu == 0 || nvcpu > snapshotMaxVCPUs {
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
		if p := r.take(kvm.RegsSize, "kvm_regs"); p != nil {
			binary.Decode(p, le, &v.Regs)
		}
		if p := r.take(kvm.SregsSize, "kvm_sregs"); p != nil {
			binary.Decode(p, le, &v.Sregs)
		}
		v.FPU = r.blob("kvm_fpu", kvm.FPUSize)
		v.XSAVE = r.blob("kvm_xsave", kvm.XsaveSize)
		v.XCRs = r.blob("kvm_xcrs", kvm.XcrsSize)
		v.Events = r.blob("kvm_vcpu_events", kvm.VcpuEventsSize)
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
	if err := r.diskSection(s); err != nil {
		return nil, err
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

// diskSection decodes the disk section into s, checking every count and
// number against the disk's size and the bytes present before it
// allocates or multiplies anything. DiskData aliases the encoded bytes.
func (r *snapReader) diskSection(s *Snapshot) error {
	s.DiskBytes = r.u64("disk size")
	n := r.u64("disk chunk count")
	if r.err != nil {
		return r.err
	}
	if s.DiskBytes%BlockSectorBytes != 0 {
		return badSnapshot("disk size %d is not a multiple of the %d-byte sector", s.DiskBytes, BlockSectorBytes)
	}
	if s.DiskOmitted && n != 0 {
		return badSnapshot("the disk's contents are flagged omitted, yet %d disk chunks follow", n)
	}
	if max := diskChunks(s.DiskBytes); n > max {
		return badSnapshot("disk chunk count %d exceeds the %d chunks of a %d-byte disk", n, max, s.DiskBytes)
	}
	// Each chunk takes at least 8 bytes here: a count the bytes cannot
	// hold is refused before n*8 or n*DiskChunkBytes could overflow.
	if left := uint64(len(r.b) - r.off); n > left/8 {
		return badSnapshot("truncated: %d disk chunk numbers need %d bytes at offset %d, only %d remain", n, n*8, r.off, left)
	}
	nums := r.take(n*8, "disk chunk numbers")
	if r.err != nil {
		return r.err
	}
	if n == 0 {
		return nil
	}
	s.DiskChunks = make([]uint64, n)
	chunks := diskChunks(s.DiskBytes)
	for i := range s.DiskChunks {
		c := le.Uint64(nums[i*8:])
		if c >= chunks {
			return badSnapshot("disk chunk %d lies beyond the %d-byte disk", c, s.DiskBytes)
		}
		if i > 0 && c <= s.DiskChunks[i-1] {
			return badSnapshot("disk chunk numbers are not strictly increasing (%d after %d)", c, s.DiskChunks[i-1])
		}
		s.DiskChunks[i] = c
	}
	s.DiskData = r.take(diskDataBytes(s.DiskBytes, s.DiskChunks), "disk chunk data")
	return r.err
}

// crc32cCombine returns the CRC32C of a||b from crc1, that of a, and
// crc2, that of b, which is n bytes long (zlib's crc32_combine): the
// checksum of the bytes before and after a part whose checksum is known
// already, without reading that part again.
func crc32cCombine(crc1, crc2 uint32, n int) uint32 {
	if n <= 0 {
		return crc1
	}
	// odd, then even, is the operator that feeds one zero bit, then
	// two, four...: squared in turn, applied where n has a one bit.
	var odd, even [32]uint32
	odd[0] = crc32.Castagnoli
	for i, row := 1, uint32(1); i < 32; i, row = i+1, row<<1 {
		odd[i] = row
	}
	gf2Square(&even, &odd) // two zero bits
	gf2Square(&odd, &even) // four
	for {
		gf2Square(&even, &odd)
		if n&1 != 0 {
			crc1 = gf2Times(&even, crc1)
		}
		if n >>= 1; n == 0 {
			break
		}
		gf2Square(&odd, &even)
		if n&1 != 0 {
			crc1 = gf2Times(&odd, crc1)
		}
		if n >>= 1; n == 0 {
			break
		}
	}
	return crc1 ^ crc2
}

func gf2Times(mat *[32]uint32, vec uint32) uint32 {
	var sum uint32
	for i := 0; vec != 0; i, vec = i+1, vec>>1 {
		if vec&1 != 0 {
			sum ^= mat[i]
		}
	}
	return sum
}

func gf2Square(square, mat *[32]uint32) {
	for i := range mat {
		square[i] = gf2Times(mat, mat[i])
	}
}
