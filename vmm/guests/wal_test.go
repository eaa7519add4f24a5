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

// parseWAL reads a kvstore log with nothing but the documented format, so
// that the documentation and the bytes cannot drift apart.
func parseWAL(t *testing.T, disk []byte) (logID uint64, recs []walRecord) {
	t.Helper()
	castagnoli := crc32.MakeTable(crc32.Castagnoli)
	h := disk[:512]
	if string(h[0:8]) != "FTVMWAL1" {
		t.Fatalf("header magic %q, want FTVMWAL1", h[0:8])
	}
	if v := binary.LittleEndian.Uint32(h[8:]); v != 1 {
		t.Fatalf("format version %d, want 1", v)
	}
	if s := binary.LittleEndian.Uint32(h[12:]); s != 512 {
		t.Fatalf("record size %d, want 512", s)
	}
	logID = binary.LittleEndian.Uint64(h[16:])
	prev := binary.LittleEndian.Uint32(h[24:])
	if c := crc32.Checksum(h[:24], castagnoli); c != prev {
		t.Fatalf("header CRC-32C %#x, stored %#x", c, prev)
	}
	if !bytes.Equal(h[28:], make([]byte, 512-28)) {
		t.Fatal("header bytes 28..511 are not zero")
	}
	for n := 1; (n+1)*512 <= len(disk); n++ {
		r := disk[n*512 : (n+1)*512]
		if string(r[0:4]) != "KVR1" {
			break
		}
		crc := binary.LittleEndian.Uint32(r[4:])
		if c := crc32.Checksum(r[8:], castagnoli); c != crc {
			t.Fatalf("record %d: CRC-32C %#x, stored %#x", n, c, crc)
		}
		if id := binary.LittleEndian.Uint64(r[8:]); id != logID {
			t.Fatalf("record %d: log id %#x, header says %#x", n, id, logID)
		}
		if s := binary.LittleEndian.Uint64(r[16:]); s != uint64(n) {
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
		recs = append(recs, walRecord{
			seq: uint64(n), op: r[28], version: binary.LittleEndian.Uint64(r[32:]),
			key: string(r[40 : 40+kl]), val: string(r[104 : 104+vl]),
		})
		prev = crc
	}
	return logID, recs
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
