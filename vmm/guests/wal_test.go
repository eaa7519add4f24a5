package guests

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"os"
	"testing"
)

// walRecord is one record as README.md documents it.
type walRecord struct {
	seq, version uint64
	op           byte
	key, val     string
}

// walEntry is one entry of a compacted table.
type walEntry struct {
	version  uint64
	key, val string
}

// walHeader is a header slot as README.md documents it.
type walHeader struct {
	logID, gen, logSectors, tableSectors uint64
	tableSlot, entries, tableCRC, crc    uint32
}

// walDisk is everything a disk holds, read as README.md says.
type walDisk struct {
	header walHeader // the header in effect
	slot   int       // its header slot: 0 (A, sector 0) or 1 (B, last sector)
	table  []walEntry
	recs   []walRecord
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// parseWALHeader reads one header sector; ok is false when it does not
// check out for a disk of sectors sectors.
func parseWALHeader(t *testing.T, h []byte, sectors uint64) (walHeader, bool) {
	t.Helper()
	if string(h[0:8]) != "FTVMWAL1" || binary.LittleEndian.Uint32(h[60:]) != crc32.Checksum(h[:60], castagnoli) {
		return walHeader{}, false
	}
	if v := binary.LittleEndian.Uint32(h[8:]); v != 2 {
		t.Fatalf("format version %d, want 2", v)
	}
	if s := binary.LittleEndian.Uint32(h[12:]); s != 512 {
		t.Fatalf("record size %d, want 512", s)
	}
	if !bytes.Equal(h[64:], make([]byte, 512-64)) {
		t.Fatal("header bytes 64..511 are not zero")
	}
	le := binary.LittleEndian
	w := walHeader{logID: le.Uint64(h[16:]), gen: le.Uint64(h[24:]), logSectors: le.Uint64(h[32:]), tableSectors: le.Uint64(h[40:]),
		tableSlot: le.Uint32(h[48:]), entries: le.Uint32(h[52:]), tableCRC: le.Uint32(h[56:]), crc: le.Uint32(h[60:])}
	used := 1 + w.logSectors
	if w.tableSectors > 0 {
		used += 2*w.tableSectors + 1
	}
	if used != sectors {
		t.Fatalf("header %+v: its layout covers %d sectors of %d", w, used, sectors)
	}
	return w, true
}

// readWAL reads a kvstore disk with nothing but the documented format, so
// that the documentation and the bytes cannot drift apart.
func readWAL(t *testing.T, disk []byte) walDisk {
	t.Helper()
	sectors := uint64(len(disk) / 512)
	a, okA := parseWALHeader(t, disk[:512], sectors)
	var d walDisk
	switch b, okB := parseWALHeader(t, disk[len(disk)-512:], sectors); {
	case okA && a.tableSectors == 0:
		d.header = a // no slot B: the last sector is a record
	case okB && (!okA || b.gen > a.gen):
		d.header, d.slot = b, 1
	case okA:
		d.header = a
	default:
		t.Fatal("no valid header in sector 0 or in the last sector")
	}
	h := d.header
	if h.gen%2 == 1 && d.slot != 0 || h.gen%2 == 0 && d.slot != 1 {
		t.Fatalf("generation %d in header slot %d: odd generations go to A, even to B", h.gen, d.slot)
	}
	first := 1 + h.logSectors + uint64(h.tableSlot)*h.tableSectors
	table := disk[first*512 : first*512+uint64(h.entries)*138]
	if c := crc32.Checksum(table, castagnoli); c != h.tableCRC {
		t.Fatalf("table CRC-32C %#x, header says %#x", c, h.tableCRC)
	}
	for i := 0; i < int(h.entries); i++ {
		e := table[i*138 : (i+1)*138]
		kl, vl := int(e[8]), int(e[9])
		if kl < 1 || kl > 64 || vl < 1 || vl > 64 {
			t.Fatalf("table entry %d: key length %d, value length %d", i, kl, vl)
		}
		if !bytes.Equal(e[10+kl:74], make([]byte, 64-kl)) || !bytes.Equal(e[74+vl:], make([]byte, 64-vl)) {
			t.Fatalf("table entry %d: padding is not zero", i)
		}
		d.table = append(d.table, walEntry{version: binary.LittleEndian.Uint64(e), key: string(e[10 : 10+kl]), val: string(e[74 : 74+vl])})
	}
	prev := h.crc
	for n := uint64(1); n <= h.logSectors; n++ {
		r := disk[n*512 : (n+1)*512]
		if string(r[0:4]) != "KVR1" || binary.LittleEndian.Uint64(r[8:]) != h.logID {
			break
		}
		crc := binary.LittleEndian.Uint32(r[4:])
		if c := crc32.Checksum(r[8:], castagnoli); c != crc {
			t.Fatalf("record %d: CRC-32C %#x, stored %#x", n, c, crc)
		}
		if s := binary.LittleEndian.Uint64(r[16:]); s != n {
			t.Fatalf("record %d: sequence number %d", n, s)
		}
		if p := binary.LittleEndian.Uint32(r[24:]); p != prev {
			t.Fatalf("record %d: previous CRC %#x, want %#x", n, p, prev)
		}
		kl, vl := int(r[29]), int(r[30])
		if kl < 1 || kl > 64 || vl < 1 || vl > 64 || r[31] != 0 {
			t.Fatalf("record %d: key length %d, value length %d, byte 31 %d", n, kl, vl, r[31])
		}
		if !bytes.Equal(r[40+kl:104], make([]byte, 64-kl)) || !bytes.Equal(r[104+vl:], make([]byte, 512-104-vl)) {
			t.Fatalf("record %d: padding is not zero", n)
		}
		d.recs = append(d.recs, walRecord{
			seq: n, op: r[28], version: binary.LittleEndian.Uint64(r[32:]),
			key: string(r[40 : 40+kl]), val: string(r[104 : 104+vl]),
		})
		prev = crc
	}
	return d
}

// parseWAL is readWAL for a disk whose log was never compacted.
func parseWAL(t *testing.T, disk []byte) (logID uint64, recs []walRecord) {
	t.Helper()
	d := readWAL(t, disk)
	if len(d.table) != 0 {
		t.Fatalf("the log was compacted (generation %d, %d entries)", d.header.gen, len(d.table))
	}
	return d.header.logID, d.recs
}

func TestWALFormatMatchesREADME(t *testing.T) {
	disk, err := os.ReadFile(writeLog(t))
	if err != nil {
		t.Fatal(err)
	}
	_, recs := parseWAL(t, disk)
	want := []walRecord{
		{1, 1, 1, "a", "one"},
		{2, 1, 1, "b", "two"},
		{3, 1, 2, "c", "1"},
		{4, 2, 2, "c", "2"},
		{5, 2, 1, "a", "uno"},
	}
	if len(recs) != len(want) {
		t.Fatalf("log holds %d records %+v, want %d", len(recs), recs, len(want))
	}
	for i := range want {
		if recs[i] != want[i] {
			t.Errorf("record %d: %+v, want %+v", i+1, recs[i], want[i])
		}
	}
}
