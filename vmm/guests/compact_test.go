package guests

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// newFastDisk is newDisk on a tmpfs where there is one (fdatasync there
// costs nothing), for tests that write thousands of sectors.
func newFastDisk(t *testing.T, sectors int) string {
	t.Helper()
	dir := "/dev/shm"
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return newDisk(t, sectors)
	}
	d, err := os.MkdirTemp(dir, "kvstore-disk")
	if err != nil {
		return newDisk(t, sectors)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	path := filepath.Join(d, "disk.img")
	if err := os.WriteFile(path, make([]byte, sectors*512), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// kvVal is what a GET answered: version 0 for NONE.
type kvVal struct {
	version uint64
	val     string
}

var valAnswer = regexp.MustCompile(`^(\d+) VAL (\d+) (.*)\n$`)

func (g *kvGuest) get(id int, key string) kvVal {
	g.t.Helper()
	a := g.request(fmt.Sprintf("%d GET %s", id, key))
	if a == fmt.Sprintf("%d NONE\n", id) {
		return kvVal{}
	}
	m := valAnswer.FindStringSubmatch(a)
	if m == nil {
		g.t.Fatalf("GET %s: answer %q", key, a)
	}
	v, _ := strconv.ParseUint(m[2], 10, 64)
	return kvVal{v, m[3]}
}

// TestKVStoreCompactsLongRun writes to kvstore on the default 4 MiB disk
// (what ftvm's --disk-size gives) far more times than it has sectors: the
// log is compacted again and again and no write is refused, and a restart
// finds every key's last value.
func TestKVStoreCompactsLongRun(t *testing.T) {
	const sectors = 4 << 20 / 512
	const keys, writes = 200, 3 * sectors
	disk := newFastDisk(t, sectors)
	g := startKV(t, disk, fmt.Sprintf("maxreq=%d", writes))
	g.boot()
	last := map[string]kvVal{}
	for i := range writes {
		key, val := fmt.Sprintf("k%d", i%keys), fmt.Sprintf("v%d", i)
		want := last[key].version + 1
		if got := g.request(fmt.Sprintf("%d PUT %s %s", i, key, val)); got != fmt.Sprintf("%d OK %d\n", i, want) {
			t.Fatalf("write %d of %d on a %d-sector disk: answer %q, want OK %d", i+1, writes, sectors, got, want)
		}
		last[key] = kvVal{want, val}
	}
	st := g.halt()
	if st["wal_compactions"] < 2 {
		t.Fatalf("%d writes on %d sectors: %d compactions, want at least 2", writes, sectors, st["wal_compactions"])
	}
	if said := strings.Count(strings.Join(g.out, "\n"), "kvstore: wal: compacted: generation"); uint64(said) != st["wal_compactions"] {
		t.Fatalf("the console told of %d compactions, the halt line counts %d", said, st["wal_compactions"])
	}
	t.Logf("%d writes on a %d-sector disk: %d compactions, %d records in the log now", writes, sectors, st["wal_compactions"], st["wal_records"])
	b, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	d := readWAL(t, b)
	if len(d.table) != keys || d.header.gen != st["wal_compactions"]+1 {
		t.Fatalf("disk: generation %d with %d table entries, want generation %d and %d entries", d.header.gen, len(d.table), st["wal_compactions"]+1, keys)
	}
	g = startKV(t, disk, fmt.Sprintf("maxreq=%d", keys))
	if bl := g.boot(); bl["keys"] != strconv.Itoa(keys) {
		t.Fatalf("restart: boot line %v, want keys=%d", bl, keys)
	}
	for k := range keys {
		key := fmt.Sprintf("k%d", k)
		if got := g.get(k, key); got != last[key] {
			t.Fatalf("after restart: %s = %+v, want %+v", key, got, last[key])
		}
	}
	g.halt()
}

var crashLine = regexp.MustCompile(`crash at block write (\d+) sector (\d+) len (\d+) kept (\d+)`)

// TestKVStoreCompactionCrashSafe cuts the power at every block write of a
// run that compacts its log several times (the shim's -crash-write), with
// nothing, half a sector or one sector of the cut write reaching the disk,
// restarts kvstore from the disk as the crash left it and checks that every
// acknowledged write is there (and the one in flight at most once).
func TestKVStoreCompactionCrashSafe(t *testing.T) {
	// keys=4: one table copy is 2 sectors (4 * 138 bytes); the log gets
	// 14 - 2 headers - 2 * 2 = 8 sectors, so 40 writes compact 4 times.
	const sectors, keys, puts = 14, 4, 40
	const logSectors = sectors - 2 - 2*2
	crashedIn := map[string]int{}
	for n := 1; ; n++ {
		finished := false
		for _, tear := range []int{0, 256, 512} {
			where, done := crashRun(t, sectors, logSectors, keys, puts, n, tear)
			if done {
				finished = true
				break
			}
			crashedIn[where]++
		}
		if finished {
			break
		}
		if n > 10*puts {
			t.Fatalf("%d block writes and the run has not ended", n)
		}
	}
	t.Logf("crashes by what the cut write was: %v", crashedIn)
	for _, w := range []string{"format", "record", "table", "header"} {
		if crashedIn[w] == 0 {
			t.Fatalf("no crash during a %s write (%v): the run does not compact", w, crashedIn)
		}
	}
}

// crashRun runs puts writes with the power cut at block write n, then
// restarts and checks; done reports that the run made fewer than n writes.
func crashRun(t *testing.T, sectors, logSectors, keys, puts, n, tear int) (where string, done bool) {
	t.Helper()
	disk := newFastDisk(t, sectors)
	g := startKVShim(t, disk, []string{"-crash-write", strconv.Itoa(n), "-tear", strconv.Itoa(tear)}, fmt.Sprintf("keys=%d", keys), fmt.Sprintf("maxreq=%d", puts))
	acked := map[string]kvVal{}
	var inflightKey string
	var inflight kvVal
	crashed := !g.tryBoot()
	for i := 0; i < puts && !crashed; i++ {
		key, val := fmt.Sprintf("k%d", i%keys), fmt.Sprintf("v%d", i)
		want := acked[key].version + 1
		inflightKey, inflight = key, kvVal{want, val}
		a, ok := g.tryRequest(fmt.Sprintf("%d PUT %s %s", i, key, val))
		if !ok {
			crashed = true
			break
		}
		if a != fmt.Sprintf("%d OK %d\n", i, want) {
			t.Fatalf("crash at write %d: write %d answered %q, want OK %d", n, i, a, want)
		}
		acked[key] = inflight
		inflightKey = ""
	}
	if !crashed {
		g.halt()
		return "", true
	}
	if code := g.wait(); code != 122 {
		t.Fatalf("crash at write %d: shim exit %d, want 122\n%s", n, code, g.stderr.String())
	}
	m := crashLine.FindStringSubmatch(g.stderr.String())
	if m == nil || m[1] != strconv.Itoa(n) {
		t.Fatalf("crash at write %d: the shim said %q", n, g.stderr.String())
	}
	sector, _ := strconv.Atoi(m[2])
	switch {
	case n <= 2:
		where = "format"
	case sector == 0 || sector == sectors-1:
		where = "header"
	case sector > logSectors:
		where = "table"
	default:
		where = "record"
	}

	r := startKV(t, disk, fmt.Sprintf("keys=%d", keys), fmt.Sprintf("maxreq=%d", keys))
	r.boot()
	for k := range keys {
		key := fmt.Sprintf("k%d", k)
		got := r.get(k, key)
		if got == acked[key] || key == inflightKey && got == inflight {
			continue
		}
		t.Fatalf("power cut at block write %d (a %s write, %d bytes of it kept): after restart %s = %+v, acknowledged %+v (in flight: %s %+v)\nconsole:\n%s",
			n, where, tear, key, got, acked[key], inflightKey, inflight, strings.Join(r.out, "\n"))
	}
	r.halt()
	return where, false
}

// tryBoot waits for the boot line; false if the guest exited first.
func (g *kvGuest) tryBoot() bool {
	g.t.Helper()
	deadline := time.After(replyTimeout)
	for {
		select {
		case l, ok := <-g.lines:
			if !ok {
				return false
			}
			g.out = append(g.out, l)
			if strings.HasPrefix(l, "kvstore: ip=") {
				return true
			}
		case <-deadline:
			g.t.Fatalf("no boot line within %v", replyTimeout)
		}
	}
}

// tryRequest is request for a guest that may die: false if it did.
func (g *kvGuest) tryRequest(req string) (string, bool) {
	g.t.Helper()
	if _, err := g.nic.Write(packet(req).frame()); err != nil {
		return "", false
	}
	buf := make([]byte, 2048)
	g.nic.SetReadDeadline(time.Now().Add(replyTimeout))
	n, err := g.nic.Read(buf)
	if err != nil || n == 0 {
		return "", false
	}
	p, err := parseUDP(buf[:n])
	if err != nil {
		g.t.Fatalf("answer to %q: %v", req, err)
	}
	return string(p.Payload), true
}

// v1Disk lays out a version 1 log (kvstore before compaction: the header's
// CRC at 24 over bytes 0..23, records 1..S-1) of PUTs alternating between
// keys a and b, value v<n> for record n.
func v1Disk(t *testing.T, sectors, records int) string {
	t.Helper()
	le := binary.LittleEndian
	disk := make([]byte, sectors*512)
	h := disk[:512]
	copy(h, "FTVMWAL1")
	le.PutUint32(h[8:], 1)
	le.PutUint32(h[12:], 512)
	le.PutUint64(h[16:], 0x1d1d1d1d)
	prev := crc32.Checksum(h[:24], castagnoli)
	le.PutUint32(h[24:], prev)
	versions := map[string]uint64{}
	for n := 1; n <= records; n++ {
		r := disk[n*512 : (n+1)*512]
		key, val := string(rune('a'+(n-1)%2)), fmt.Sprintf("v%d", n)
		versions[key]++
		copy(r, "KVR1")
		le.PutUint64(r[8:], 0x1d1d1d1d)
		le.PutUint64(r[16:], uint64(n))
		le.PutUint32(r[24:], prev)
		r[28], r[29], r[30] = 1, byte(len(key)), byte(len(val))
		le.PutUint64(r[32:], versions[key])
		copy(r[40:], key)
		copy(r[104:], val)
		prev = crc32.Checksum(r[8:], castagnoli)
		le.PutUint32(r[4:], prev)
	}
	path := newFastDisk(t, sectors)
	if err := os.WriteFile(path, disk, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// A disk written before compaction existed (format version 1) keeps its
// writes: kvstore replays it and moves it to version 2 by a compaction
// into the parts of the disk the old log does not use, or, where the old
// log reaches into them, goes on in version 1 as before.
func TestKVStoreTakesUpVersion1Log(t *testing.T) {
	// keys=2: a one-sector table; 16 sectors leave a log of 12.
	disk := v1Disk(t, 16, 5)
	g := startKV(t, disk, "keys=2", "maxreq=3")
	if bl := g.boot(); bl["wal_replayed"] != "5" || bl["keys"] != "2" {
		t.Fatalf("version 1 log of 5 records: boot line %v, want wal_replayed=5 keys=2", bl)
	}
	g.expect("1 GET a", "1 VAL 3 v5\n")
	g.expect("2 GET b", "2 VAL 2 v4\n")
	g.expect("3 PUT a w", "3 OK 4\n")
	g.halt()
	b, _ := os.ReadFile(disk)
	d := readWAL(t, b)
	if d.header.gen != 2 || d.slot != 1 || len(d.table) != 2 || len(d.recs) != 1 {
		t.Fatalf("after taking up the version 1 log: generation %d in slot %d, %d table entries, %d records; want 2, 1 (B), 2, 1", d.header.gen, d.slot, len(d.table), len(d.recs))
	}
	g = startKV(t, disk, "keys=2", "maxreq=2")
	g.boot()
	g.expect("1 GET a", "1 VAL 4 w\n")
	g.expect("2 GET b", "2 VAL 2 v4\n")
	g.halt()

	// A power cut during the move (its table write, then its header
	// write) loses nothing: the version 1 disk is as it was until the
	// header is in place.
	for n := 1; n <= 2; n++ {
		for _, tear := range []int{0, 256, 512} {
			disk := v1Disk(t, 16, 5)
			g := startKVShim(t, disk, []string{"-crash-write", strconv.Itoa(n), "-tear", strconv.Itoa(tear)}, "keys=2")
			if g.tryBoot() {
				t.Fatalf("crash at write %d: kvstore booted, so the move made fewer writes", n)
			}
			if code := g.wait(); code != 122 {
				t.Fatalf("crash at write %d: exit %d, want 122\n%s", n, code, g.stderr.String())
			}
			r := startKV(t, disk, "keys=2", "maxreq=2")
			r.boot()
			r.expect("1 GET a", "1 VAL 3 v5\n")
			r.expect("2 GET b", "2 VAL 2 v4\n")
			r.halt()
		}
	}

	// 14 records reach past the 12-sector log: it stays version 1.
	disk = v1Disk(t, 16, 14)
	g = startKV(t, disk, "keys=2", "maxreq=3")
	if bl := g.boot(); bl["wal_replayed"] != "14" {
		t.Fatalf("version 1 log of 14 records: wal_replayed=%s, want 14", bl["wal_replayed"])
	}
	if !strings.Contains(strings.Join(g.out, "\n"), "it stays version 1") {
		t.Fatalf("the console does not say the log stays version 1:\n%s", strings.Join(g.out, "\n"))
	}
	g.expect("1 PUT a x", "1 OK 8\n")
	g.expect("2 PUT a y", "2 ERR walfull\n")
	g.expect("3 GET a", "3 VAL 8 x\n")
	g.halt()
}

// A disk file that was resized no longer matches its header's layout;
// kvstore must refuse it, saying what to do, rather than format over the
// writes it holds.
func TestKVStoreRefusesResizedDisk(t *testing.T) {
	disk := copyDisk(t, writeLog(t))
	f, err := os.OpenFile(disk, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(make([]byte, 512))
	f.Close()
	g := startKV(t, disk, "maxreq=1")
	if code := g.wait(); code != 1 {
		t.Fatalf("a resized disk: exit %d, want 1", code)
	}
	if out := strings.Join(g.out, "\n"); !strings.Contains(out, "the disk has 129 sectors, but the header in sector 0 lays out 128: give the disk file its size back (65536 bytes)") {
		t.Fatalf("the console does not say what is wrong and what to do:\n%s", out)
	}
	// Given its size back, the log is all there.
	if err := os.Truncate(disk, 128*512); err != nil {
		t.Fatal(err)
	}
	g = startKV(t, disk, "maxreq=1")
	if bl := g.boot(); bl["wal_replayed"] != "5" {
		t.Fatalf("size restored: wal_replayed=%s, want 5", bl["wal_replayed"])
	}
	g.expect("1 GET a", "1 VAL 2 uno\n")
	g.halt()
}
