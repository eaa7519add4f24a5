package vmm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math/bits"
)

// DirtySet is what a VM changed since the snapshot it last took or
// restored (its base): the base's chain position, the VM's memory and disk
// sizes, and the pages and disk chunks written since. A secondary sends
// its own (Machine.DirtySinceBase) with a resynchronisation request, and
// the primary, if it is at the same base, answers with an increment that
// holds these as well as its own (Machine.SnapshotCovering).
//
// The encoding (MarshalBinary / UnmarshalDirtySet) is little-endian and at
// most MaxDirtySetBytes long:
//
//	off  size  field
//	0    8     magic "FTVMDIRT"
//	8    2     format version, 1
//	10   6     reserved, zero
//	16   8     chain id of the base
//	24   8     seq of the base
//	32   8     memory size in bytes (8 MiB to 2 GiB in 2 MiB steps)
//	40   8     disk size in bytes (a multiple of 512; 0: no disk)
//	48         pages section (items: page numbers, below memory size / 4096)
//	...        chunks section (items: disk chunk numbers of DiskChunkBytes,
//	           below the disk's chunk count)
//	end-4 4    CRC32C (Castagnoli) of every byte before it
//
// Each section:
//
//	0    1     form: 0 ranges, 1 bitmap
//	1    3     reserved, zero
//	4    4     body length L in bytes
//	8    L     body
//
// A ranges body is a sequence of pairs of unsigned varints (gap, run),
// each in its shortest encoding (encoding/binary's Uvarint): a range of
// run >= 1 consecutive items starting gap items after the end of the
// previous range (after 0 for the first), with gap >= 1 for every range
// but the first, so that ranges are maximal and increasing. An empty set
// is a ranges body of length 0. A bitmap body has one bit per possible
// item, item i at bit i%8 of byte i/8, exactly ceil(limit/8) bytes, the
// bits past the limit zero. The encoder picks the bitmap only when it is
// strictly shorter than the ranges, so every set has exactly one encoding
// and the decoder refuses any other (non-shortest varints, adjacent
// ranges, the longer form): a bitmap bounds a section at 64 KiB for 2 GiB
// of memory, however scattered the pages, where ranges would need 512 KiB.
//
// At most dirtySetMaxItems pages and as many chunks: a disk with more
// written since the base (over 2 GiB) makes MarshalBinary fail, and the
// caller resynchronises in full.
type DirtySet struct {
	ChainID, Seq uint64 // the base's chain position
	MemSize      uint64
	DiskBytes    uint64
	Pages        []uint64 // strictly increasing page numbers
	Chunks       []uint64 // strictly increasing disk chunk numbers
}

// MaxDirtySetBytes bounds an encoded DirtySet: the header, a pages section
// of at most the bitmap of 2 GiB of memory, a chunks section as long
// (the bitmap of a 2 GiB disk, or the ranges of a larger one that fit),
// and the checksum. A set whose encoding would exceed it (scattered
// writes over a disk larger than 2 GiB) cannot be encoded.
const MaxDirtySetBytes = dirtySetHeaderBytes + 2*(dirtySetSectionHeaderBytes+dirtySetBitmapMaxBytes) + dirtySetCRCBytes

const (
	dirtySetMagic              = "FTVMDIRT"
	dirtySetVersion            = 1
	dirtySetHeaderBytes        = 48
	dirtySetSectionHeaderBytes = 8
	dirtySetCRCBytes           = 4
	// dirtySetMaxItems bounds the pages and the chunks of a set: the
	// pages of 2 GiB of memory, and as many disk chunks.
	dirtySetMaxItems = memSizeMaxBytes / PageBytes
	// dirtySetBitmapMaxBytes is the bitmap of dirtySetMaxItems items.
	dirtySetBitmapMaxBytes = dirtySetMaxItems / 8

	dirtyFormRanges = 0
	dirtyFormBitmap = 1
)

// ErrBadDirtySet is wrapped by every error about a malformed DirtySet.
var ErrBadDirtySet = errors.New("bad dirty set")

func badDirtySet(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadDirtySet, fmt.Sprintf(format, args...))
}

// pageLimit and chunkLimit are the item counts the sections range over.
func (d *DirtySet) pageLimit() uint64  { return d.MemSize / PageBytes }
func (d *DirtySet) chunkLimit() uint64 { return diskChunks(d.DiskBytes) }

// check says whether the set is one MarshalBinary can encode.
func (d *DirtySet) check() error {
	if err := checkMemSize(d.MemSize); err != nil {
		return fmt.Errorf("dirty set: %v", err)
	}
	if d.DiskBytes%BlockSectorBytes != 0 {
		return fmt.Errorf("dirty set: disk size %d is not a multiple of the %d-byte sector", d.DiskBytes, BlockSectorBytes)
	}
	for _, s := range []struct {
		what  string
		items []uint64
		limit uint64
	}{{"page", d.Pages, d.pageLimit()}, {"disk chunk", d.Chunks, d.chunkLimit()}} {
		if len(s.items) > dirtySetMaxItems {
			return fmt.Errorf("dirty set: %d %ss, more than the %d a set may hold: resynchronise in full", len(s.items), s.what, dirtySetMaxItems)
		}
		for i, v := range s.items {
			if v >= s.limit {
				return fmt.Errorf("dirty set: %s %d is beyond the last (%d)", s.what, v, s.limit)
			}
			if i > 0 && v <= s.items[i-1] {
				return fmt.Errorf("dirty set: %s numbers are not strictly increasing (%d after %d)", s.what, v, s.items[i-1])
			}
		}
	}
	return nil
}

// MarshalBinary encodes the set in the format documented on DirtySet. It
// fails on a set that is not valid (sizes, numbers out of order or range)
// or whose encoding would exceed MaxDirtySetBytes.
func (d *DirtySet) MarshalBinary() ([]byte, error) {
	if err := d.check(); err != nil {
		return nil, err
	}
	b := make([]byte, 0, 128)
	b = append(b, dirtySetMagic...)
	b = le.AppendUint16(b, dirtySetVersion)
	b = append(b, 0, 0, 0, 0, 0, 0)
	for _, v := range []uint64{d.ChainID, d.Seq, d.MemSize, d.DiskBytes} {
		b = le.AppendUint64(b, v)
	}
	b = appendDirtySection(b, d.Pages, d.pageLimit())
	b = appendDirtySection(b, d.Chunks, d.chunkLimit())
	if len(b)+dirtySetCRCBytes > MaxDirtySetBytes {
		return nil, fmt.Errorf("dirty set of %d pages and %d disk chunks takes %d bytes encoded, more than MaxDirtySetBytes (%d): resynchronise in full", len(d.Pages), len(d.Chunks), len(b)+dirtySetCRCBytes, MaxDirtySetBytes)
	}
	return le.AppendUint32(b, crc32.Checksum(b, castagnoli)), nil
}

// rangesBytes is the length of the ranges body of items.
func rangesBytes(items []uint64) uint64 {
	var n uint64
	forEachRange(items, func(gap, run uint64) { n += uint64(uvarintLen(gap) + uvarintLen(run)) })
	return n
}

// forEachRange calls fn with the (gap, run) of each maximal run of
// consecutive items (strictly increasing).
func forEachRange(items []uint64, fn func(gap, run uint64)) {
	end := uint64(0) // end of the previous range
	for i := 0; i < len(items); {
		j := i + 1
		for j < len(items) && items[j] == items[j-1]+1 {
			j++
		}
		fn(items[i]-end, uint64(j-i))
		end = items[j-1] + 1
		i = j
	}
}

func uvarintLen(v uint64) int { return max(1, (bits.Len64(v)+6)/7) }

func bitmapBytes(limit uint64) uint64 { return (limit + 7) / 8 }

func appendDirtySection(b []byte, items []uint64, limit uint64) []byte {
	rb := rangesBytes(items)
	if bb := bitmapBytes(limit); bb < rb {
		b = append(b, dirtyFormBitmap, 0, 0, 0)
		b = le.AppendUint32(b, uint32(bb))
		start := len(b)
		b = append(b, make([]byte, bb)...)
		for _, v := range items {
			b[start+int(v/8)] |= 1 << (v % 8)
		}
		return b
	}
	b = append(b, dirtyFormRanges, 0, 0, 0)
	b = le.AppendUint32(b, uint32(min(rb, 1<<32-1)))
	forEachRange(items, func(gap, run uint64) {
		b = binary.AppendUvarint(b, gap)
		b = binary.AppendUvarint(b, run)
	})
	return b
}

// UnmarshalDirtySet decodes and checks an encoded DirtySet: its length,
// magic, version and checksum first, then every field (sizes valid,
// reserved bytes zero, each section in its one canonical form, every
// number in range). It copies what it keeps: b may be reused.
func UnmarshalDirtySet(b []byte) (*DirtySet, error) {
	if len(b) > MaxDirtySetBytes {
		return nil, badDirtySet("%d bytes, more than MaxDirtySetBytes (%d)", len(b), MaxDirtySetBytes)
	}
	if len(b) < dirtySetHeaderBytes+2*dirtySetSectionHeaderBytes+dirtySetCRCBytes {
		return nil, badDirtySet("truncated: %d bytes, shorter than the %d-byte header, two section headers and the checksum", len(b), dirtySetHeaderBytes+2*dirtySetSectionHeaderBytes+dirtySetCRCBytes)
	}
	if string(b[:8]) != dirtySetMagic {
		return nil, badDirtySet("magic is %q, want %q: not an ftvm dirty set", b[:8], dirtySetMagic)
	}
	if v := le.Uint16(b[8:]); v != dirtySetVersion {
		return nil, badDirtySet("format version %d; this VMM reads version %d", v, dirtySetVersion)
	}
	body := b[:len(b)-dirtySetCRCBytes]
	if got, want := crc32.Checksum(body, castagnoli), le.Uint32(b[len(body):]); got != want {
		return nil, badDirtySet("checksum mismatch (stored %#08x, computed %#08x): the dirty set is corrupt or truncated", want, got)
	}
	for _, c := range b[10:16] {
		if c != 0 {
			return nil, badDirtySet("reserved header bytes are not zero")
		}
	}
	d := &DirtySet{
		ChainID:   le.Uint64(b[16:]),
		Seq:       le.Uint64(b[24:]),
		MemSize:   le.Uint64(b[32:]),
		DiskBytes: le.Uint64(b[40:]),
	}
	if err := checkMemSize(d.MemSize); err != nil {
		return nil, badDirtySet("%v", err)
	}
	if d.DiskBytes%BlockSectorBytes != 0 {
		return nil, badDirtySet("disk size %d is not a multiple of the %d-byte sector", d.DiskBytes, BlockSectorBytes)
	}
	rest := body[dirtySetHeaderBytes:]
	var err error
	if d.Pages, rest, err = decodeDirtySection(rest, "pages", d.pageLimit()); err != nil {
		return nil, err
	}
	if d.Chunks, rest, err = decodeDirtySection(rest, "disk chunks", d.chunkLimit()); err != nil {
		return nil, err
	}
	if len(rest) != 0 {
		return nil, badDirtySet("%d bytes of trailing garbage before the checksum", len(rest))
	}
	return d, nil
}

// decodeDirtySection decodes one section of items below limit from the
// front of b and returns the rest.
func decodeDirtySection(b []byte, what string, limit uint64) ([]uint64, []byte, error) {
	if len(b) < dirtySetSectionHeaderBytes {
		return nil, nil, badDirtySet("truncated: the %s section header needs %d bytes, %d remain", what, dirtySetSectionHeaderBytes, len(b))
	}
	form := b[0]
	if b[1]|b[2]|b[3] != 0 {
		return nil, nil, badDirtySet("the %s section's reserved bytes are not zero", what)
	}
	n := uint64(le.Uint32(b[4:]))
	b = b[dirtySetSectionHeaderBytes:]
	if n > uint64(len(b)) {
		return nil, nil, badDirtySet("truncated: the %s section's body is %d bytes, %d remain", what, n, len(b))
	}
	body, rest := b[:n], b[n:]
	var items []uint64
	switch form {
	case dirtyFormBitmap:
		if want := bitmapBytes(limit); n != want {
			return nil, nil, badDirtySet("the %s bitmap is %d bytes; %d items need %d", what, n, limit, want)
		}
		for i, c := range body {
			for c != 0 {
				v := uint64(i)*8 + uint64(bits.TrailingZeros8(c))
				if v >= limit {
					return nil, nil, badDirtySet("the %s bitmap sets item %d, beyond the last (%d)", what, v, limit)
				}
				if len(items) == dirtySetMaxItems {
					return nil, nil, badDirtySet("more than %d %s", dirtySetMaxItems, what)
				}
				items = append(items, v)
				c &= c - 1
			}
		}
		if rb := rangesBytes(items); rb <= n {
			return nil, nil, badDirtySet("the %s are a %d-byte bitmap, but their ranges take %d: not the canonical form", what, n, rb)
		}
	case dirtyFormRanges:
		end := uint64(0)
		for first := true; len(body) > 0; first = false {
			gap, err := readUvarint(&body, what)
			if err != nil {
				return nil, nil, err
			}
			run, err := readUvarint(&body, what)
			if err != nil {
				return nil, nil, err
			}
			if run == 0 || (!first && gap == 0) {
				return nil, nil, badDirtySet("the %s ranges hold an empty or adjacent range (gap %d, run %d)", what, gap, run)
			}
			if gap > limit-end || run > limit-end-gap {
				return nil, nil, badDirtySet("a %s range reaches past the last item (%d)", what, limit)
			}
			if run > dirtySetMaxItems-uint64(len(items)) {
				return nil, nil, badDirtySet("more than %d %s", dirtySetMaxItems, what)
			}
			for v := end + gap; v < end+gap+run; v++ {
				items = append(items, v)
			}
			end += gap + run
		}
		if bb := bitmapBytes(limit); bb < n {
			return nil, nil, badDirtySet("the %s ranges take %d bytes, but their bitmap takes %d: not the canonical form", what, n, bb)
		}
	default:
		return nil, nil, badDirtySet("the %s section's form is %d; want 0 (ranges) or 1 (bitmap)", what, form)
	}
	return items, rest, nil
}

// readUvarint takes one shortest-form unsigned varint from the front of
// *b.
func readUvarint(b *[]byte, what string) (uint64, error) {
	v, k := binary.Uvarint(*b)
	if k <= 0 {
		return 0, badDirtySet("the %s ranges end in a truncated or overlong varint", what)
	}
	if k != uvarintLen(v) {
		return 0, badDirtySet("the %s ranges hold a varint of %d bytes for %d, which takes %d", what, k, v, uvarintLen(v))
	}
	*b = (*b)[k:]
	return v, nil
}
