package guests

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

var (
	// guestMAC is not the shim's default, so a test sees that kvstore
	// takes its MAC from the NIC.
	guestMAC   = mac{0x02, 0x42, 0xac, 0x11, 0x00, 0x07}
	guestIP    = ipv4{10, 77, 0, 2}
	clientMAC  = mac{0x02, 0xc1, 0x1e, 0x00, 0x00, 0x01}
	clientIP   = ipv4{10, 77, 0, 9}
	clientPort = uint16(40001)
	kvPort     = uint16(7000)
)

// replyTimeout guards against a hung guest; no test depends on replies
// being faster than this.
const replyTimeout = 20 * time.Second

// kvGuest is a hosted kvstore with its NIC on one end of a SOCK_SEQPACKET
// pair (one message, one frame) and its console on a pipe.
type kvGuest struct {
	t      *testing.T
	cmd    *exec.Cmd
	nic    *net.UnixConn
	lines  chan string
	out    []string
	stderr bytes.Buffer
	exited chan struct{}
	err    error // from cmd.Wait, valid after exited is closed
}

func startKV(t *testing.T, block string, args ...string) *kvGuest {
	t.Helper()
	return startKVShim(t, block, nil, args...)
}

// startKVShim is startKV with extra flags for the shim (before "--").
func startKVShim(t *testing.T, block string, shimFlags []string, args ...string) *kvGuest {
	t.Helper()
	bin := hostedBinary(t, "kvstore")
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_SEQPACKET|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socketpair: %v", err)
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "nic-test"), os.NewFile(uintptr(fds[1]), "nic-guest")
	c, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		t.Fatalf("wrapping the NIC socket: %v", err)
	}
	argv := []string{"-mac", guestMAC.String(), "-nicfd", "3"}
	if block != "" {
		argv = append(argv, "-block", block)
	}
	argv = append(argv, shimFlags...)
	argv = append(append(argv, "--"), args...)
	g := &kvGuest{t: t, nic: c.(*net.UnixConn), lines: make(chan string, 4096), exited: make(chan struct{})}
	g.cmd = exec.Command(bin, argv...)
	g.cmd.ExtraFiles = []*os.File{theirs} // fd 3 in the guest
	g.cmd.Stderr = &g.stderr
	stdout, err := g.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := g.cmd.Start(); err != nil {
		t.Fatalf("starting hosted kvstore: %v", err)
	}
	theirs.Close()
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			g.lines <- sc.Text()
		}
		close(g.lines)
		g.err = g.cmd.Wait()
		close(g.exited)
	}()
	t.Cleanup(func() {
		g.nic.Close()
		select {
		case <-g.exited:
		case <-time.After(replyTimeout):
			g.cmd.Process.Kill()
			<-g.exited
		}
		if t.Failed() {
			t.Logf("kvstore console:\n%s\nstderr:\n%s", strings.Join(g.out, "\n"), g.stderr.String())
		}
	})
	return g
}

// line returns the next console line starting with prefix.
func (g *kvGuest) line(prefix string) string {
	g.t.Helper()
	deadline := time.After(replyTimeout)
	for {
		select {
		case l, ok := <-g.lines:
			if !ok {
				g.t.Fatalf("kvstore exited without printing a line starting %q", prefix)
			}
			g.out = append(g.out, l)
			if strings.HasPrefix(l, prefix) {
				return l
			}
		case <-deadline:
			g.t.Fatalf("no console line starting %q within %v", prefix, replyTimeout)
		}
	}
}

// boot waits for the boot line and returns its key=value fields.
func (g *kvGuest) boot() map[string]string {
	g.t.Helper()
	return fields(g.line("kvstore: ip="))
}

func fields(line string) map[string]string {
	m := map[string]string{}
	for _, w := range strings.Fields(line) {
		if k, v, ok := strings.Cut(w, "="); ok {
			m[k] = v
		}
	}
	return m
}

// wait waits for the guest to halt and returns its exit code.
func (g *kvGuest) wait() int {
	g.t.Helper()
	select {
	case <-g.exited:
	case <-time.After(replyTimeout):
		g.t.Fatalf("kvstore did not halt within %v", replyTimeout)
	}
	for l := range g.lines {
		g.out = append(g.out, l)
	}
	var ee *exec.ExitError
	if errors.As(g.err, &ee) {
		return ee.ExitCode()
	}
	if g.err != nil {
		g.t.Fatalf("waiting for kvstore: %v", g.err)
	}
	return 0
}

// halt waits for a maxreq halt and returns the counters of the halt line.
func (g *kvGuest) halt() map[string]uint64 {
	g.t.Helper()
	l := g.line("kvstore: halt ")
	if code := g.wait(); code != 0 {
		g.t.Fatalf("kvstore exit code %d after maxreq, want 0", code)
	}
	stats := map[string]uint64{}
	for k, v := range fields(l) {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			g.t.Fatalf("halt line field %s=%q is not a number: %s", k, v, l)
		}
		stats[k] = n
	}
	return stats
}

func (g *kvGuest) send(frame []byte) {
	g.t.Helper()
	if _, err := g.nic.Write(frame); err != nil {
		g.t.Fatalf("sending a frame to kvstore: %v", err)
	}
}

func (g *kvGuest) recv(what string) []byte {
	g.t.Helper()
	buf := make([]byte, 2048)
	g.nic.SetReadDeadline(time.Now().Add(replyTimeout))
	n, err := g.nic.Read(buf)
	if err != nil {
		g.t.Fatalf("waiting for %s: %v", what, err)
	}
	return buf[:n]
}

// packet is a request from the client to kvstore, to be changed by tests.
func packet(payload string) udpPacket {
	return udpPacket{
		SrcMAC: clientMAC, DstMAC: guestMAC,
		SrcIP: clientIP, DstIP: guestIP,
		SrcPort: clientPort, DstPort: kvPort,
		Payload: []byte(payload),
	}
}

// exchange sends frame and returns the payload of the answer, after
// checking that the answer is a well-formed datagram back to the client.
func (g *kvGuest) exchange(frame []byte, what string) string {
	g.t.Helper()
	g.send(frame)
	b := g.recv("the answer to " + what)
	p, err := parseUDP(b)
	if err != nil {
		g.t.Fatalf("answer to %s: %v", what, err)
	}
	if p.DstMAC != clientMAC || p.SrcMAC != guestMAC {
		g.t.Fatalf("answer to %s: MACs %v -> %v, want %v -> %v", what, p.SrcMAC, p.DstMAC, guestMAC, clientMAC)
	}
	if p.SrcIP != guestIP || p.DstIP != clientIP {
		g.t.Fatalf("answer to %s: IPs %v -> %v, want %v -> %v", what, p.SrcIP, p.DstIP, guestIP, clientIP)
	}
	if p.DstPort != clientPort {
		g.t.Fatalf("answer to %s: ports %d -> %d, want -> %d", what, p.SrcPort, p.DstPort, clientPort)
	}
	if len(b) < 60 {
		g.t.Fatalf("answer to %s: %d-byte frame, Ethernet minimum is 60", what, len(b))
	}
	return string(p.Payload)
}

func (g *kvGuest) request(req string) string {
	g.t.Helper()
	return g.exchange(packet(req).frame(), fmt.Sprintf("%q", req))
}

func (g *kvGuest) expect(req, want string) {
	g.t.Helper()
	if got := g.request(req); got != want {
		g.t.Fatalf("request %q: answer %q, want %q", req, got, want)
	}
}

// newDisk creates a zero-filled block device file of the given sectors.
func newDisk(t *testing.T, sectors int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, make([]byte, sectors*512), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func copyDisk(t *testing.T, src string) string {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "copy.img")
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return dst
}

func TestKVStoreARP(t *testing.T) {
	g := startKV(t, newDisk(t, 64), "maxreq=1")
	g.boot()
	bcast := mac{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	g.send(arpPacket{EthSrc: clientMAC, EthDst: bcast, Op: arpRequest, SHA: clientMAC, SPA: clientIP, TPA: guestIP}.frame())
	b := g.recv("the ARP reply")
	a, err := parseARP(b)
	if err != nil {
		t.Fatalf("ARP reply: %v", err)
	}
	want := arpPacket{EthSrc: guestMAC, EthDst: clientMAC, Op: arpReply, SHA: guestMAC, SPA: guestIP, THA: clientMAC, TPA: clientIP}
	if a != want {
		t.Fatalf("ARP reply\n got %+v\nwant %+v", a, want)
	}
	// Not for us, and not a request: no answer. The next answer proves it.
	g.send(arpPacket{EthSrc: clientMAC, EthDst: bcast, Op: arpRequest, SHA: clientMAC, SPA: clientIP, TPA: ipv4{10, 77, 0, 3}}.frame())
	g.send(arpPacket{EthSrc: clientMAC, EthDst: guestMAC, Op: arpReply, SHA: clientMAC, SPA: clientIP, THA: guestMAC, TPA: guestIP}.frame())
	g.expect("1 GET a", "1 NONE\n")
	s := g.halt()
	if s["arp_replies"] != 1 || s["arp_ignored"] != 2 {
		t.Fatalf("arp_replies=%d arp_ignored=%d, want 1 and 2", s["arp_replies"], s["arp_ignored"])
	}
}

func TestKVStoreRequests(t *testing.T) {
	k64, k65 := strings.Repeat("k", 64), strings.Repeat("k", 65)
	v64, v65 := strings.Repeat("v", 64), strings.Repeat("v", 65)
	steps := []struct{ req, want string }{
		{"1 GET a", "1 NONE\n"},
		{"2 PUT a hello world", "2 OK 1\n"},
		{"3 GET a", "3 VAL 1 hello world\n"},
		{"4 PUT a x\n", "4 OK 2\n"},
		{"5 GET a\r\n", "5 VAL 2 x\n"},
		{"6 INC n", "6 VAL 1\n"},
		{"7 INC n", "7 VAL 2\n"},
		{"8 GET n", "8 VAL 2 2\n"},
		{"9 INC a", "9 ERR notnum\n"},
		{"10 PUT neg -5", "10 OK 1\n"},
		{"11 INC neg", "11 VAL -4\n"},
		{"12 PUT big 9223372036854775807", "12 OK 1\n"},
		{"13 INC big", "13 ERR overflow\n"},
		{"14 GET big", "14 VAL 1 9223372036854775807\n"},
		{"", "? ERR badid\n"},
		{"abc GET a", "? ERR badid\n"},
		{"-1 GET a", "? ERR badid\n"},
		{"18446744073709551616 GET a", "? ERR badid\n"},
		{"18446744073709551615 GET n", "18446744073709551615 VAL 2 2\n"},
		{"15", "15 ERR usage\n"},
		{"16 FOO a", "16 ERR badop\n"},
		{"17 get a", "17 ERR badop\n"},
		{"18 GET", "18 ERR usage\n"},
		{"19 GET a b", "19 ERR usage\n"},
		{"20 PUT a", "20 ERR usage\n"},
		{"21 PUT a ", "21 ERR usage\n"},
		{"22 GET  a", "22 ERR usage\n"},
		{"23 GET " + k65, "23 ERR keylen\n"},
		{"24 PUT " + k65 + " v", "24 ERR keylen\n"},
		{"25 INC " + k65, "25 ERR keylen\n"},
		{"26 PUT " + k64 + " v", "26 OK 1\n"},
		{"27 GET " + k64, "27 VAL 1 v\n"},
		{"28 PUT k " + v65, "28 ERR vallen\n"},
		{"29 PUT k " + v64, "29 OK 1\n"},
		{"30 PUT k\x01 v", "30 ERR badchar\n"},
		{"31 PUT k tab\there", "31 ERR badchar\n"},
		{"32 GET k", "32 VAL 1 " + v64 + "\n"},
		{"33 PUT a with  two  spaces", "33 OK 3\n"},
		{"34 GET a", "34 VAL 3 with  two  spaces\n"},
	}
	g := startKV(t, newDisk(t, 256), fmt.Sprintf("maxreq=%d", len(steps)))
	if b := g.boot(); b["mac"] != guestMAC.String() || b["ip"] != "10.77.0.2" || b["port"] != "7000" {
		t.Fatalf("boot line fields %v: want the NIC's MAC %v, ip 10.77.0.2, port 7000", b, guestMAC)
	}
	for _, s := range steps {
		g.expect(s.req, s.want)
	}
	st := g.halt()
	if st["requests"] != uint64(len(steps)) {
		t.Fatalf("halt line says requests=%d, want %d", st["requests"], len(steps))
	}
	// Writes: PUT a x3, INC n x2, PUT neg, INC neg, PUT big, PUT k64, PUT k.
	if st["wal_records"] != 10 {
		t.Fatalf("wal_records=%d, want 10 (one per successful write)", st["wal_records"])
	}
}

// TestKVStoreDrops sends frames kvstore must not answer, each carrying a
// write that would show if it were applied, and proves each was dropped
// for its reason: the next answer is the one to the next request, GETs see
// no trace of the write, and the reason's counter moved.
func TestKVStoreDrops(t *testing.T) {
	type drop struct {
		name    string
		frame   func() []byte
		counter string
	}
	mutate := func(f func(b []byte)) func() []byte {
		return func() []byte {
			b := packet("1 PUT a dropped").frame()
			f(b)
			return b
		}
	}
	with := func(f func(p *udpPacket)) func() []byte {
		return func() []byte {
			p := packet("1 PUT a dropped")
			f(&p)
			return p.frame()
		}
	}
	drops := []drop{
		{"bad IP checksum", mutate(func(b []byte) { b[offIPCsum] ^= 0x01 }), "drop_ip_csum"},
		{"bad UDP checksum", mutate(func(b []byte) { b[offUDPCsum] ^= 0x80 }), "drop_udp_csum"},
		{"payload corrupted in flight", mutate(func(b []byte) { b[len(b)-1] ^= 0x20 }), "drop_udp_csum"},
		{"first fragment (MF)", with(func(p *udpPacket) { p.FragField = ipFlagMF }), "drop_ip_frag"},
		{"later fragment (offset)", with(func(p *udpPacket) { p.FragField = 185 }), "drop_ip_frag"},
		{"IPv6 ethertype", mutate(func(b []byte) { binary.BigEndian.PutUint16(b[12:], typeIPv6) }), "ignored_type"},
		{"other destination IP", with(func(p *udpPacket) { p.DstIP = ipv4{10, 77, 0, 3} }), "drop_ip_dst"},
		{"other UDP port", with(func(p *udpPacket) { p.DstPort = kvPort + 1 }), "drop_udp_port"},
		{"other destination MAC", with(func(p *udpPacket) { p.DstMAC = mac{0x02, 0, 0, 0, 0, 0x99} }), "drop_eth"},
		{"TCP", with(func(p *udpPacket) { p.Proto = 6 }), "drop_ip_proto"},
		{"IP length beyond frame", func() []byte { b := packet("1 PUT a dropped").frame(); return b[:len(b)-4] }, "drop_ip_hdr"},
		{"runt frame", func() []byte { return packet("").frame()[:10] }, "drop_eth"},
		{"UDP length reaching into Ethernet padding", func() []byte {
			// The UDP header claims 4 bytes more than the IP datagram holds;
			// the frame has them as padding, with a checksum that covers
			// them, so only the IP length can tell that they are not data.
			b := append(packet("1 PUT a dropped").frame(), " xyz"...)
			udp := b[ethHdrLen+ipHdrLen:]
			binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
			binary.BigEndian.PutUint16(udp[6:], 0)
			binary.BigEndian.PutUint16(udp[6:], udpChecksum(clientIP, guestIP, udp))
			return b
		}, "drop_udp_hdr"},
	}
	// One extra request before the drops, one after each drop, and three
	// accepted oddities at the end.
	g := startKV(t, newDisk(t, 64), fmt.Sprintf("maxreq=%d", 1+len(drops)+3))
	g.boot()
	g.expect("100 PUT a kept", "100 OK 1\n")
	want := map[string]uint64{}
	for i, d := range drops {
		g.send(d.frame())
		want[d.counter]++
		id := 101 + i
		if got := g.request(fmt.Sprintf("%d GET a", id)); got != fmt.Sprintf("%d VAL 1 kept\n", id) {
			t.Fatalf("after a frame with %s: answer %q; the frame was not dropped", d.name, got)
		}
	}
	// A zero UDP checksum means "none" and is accepted.
	p := packet("200 PUT z 1").frame()
	binary.BigEndian.PutUint16(p[offUDPCsum:], 0)
	if got := g.exchange(p, "a datagram without UDP checksum"); got != "200 OK 1\n" {
		t.Fatalf("datagram without UDP checksum: answer %q, want \"200 OK 1\\n\"", got)
	}
	// Ethernet padding after the datagram is not part of it.
	p = packet("201 GET z").frame()
	p = append(p, bytes.Repeat([]byte{0xaa}, 60-len(p)+8)...)
	if got := g.exchange(p, "a padded frame"); got != "201 VAL 1 1\n" {
		t.Fatalf("padded frame: answer %q, want \"201 VAL 1 1\\n\"", got)
	}
	// Broadcast frames are for us too.
	bp := packet("202 GET z")
	bp.DstMAC = mac{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	if got := g.exchange(bp.frame(), "a broadcast frame"); got != "202 VAL 1 1\n" {
		t.Fatalf("broadcast frame: answer %q", got)
	}
	st := g.halt()
	for _, c := range []string{"drop_ip_csum", "drop_udp_csum", "drop_ip_frag", "ignored_type", "drop_ip_dst",
		"drop_udp_port", "drop_eth", "drop_ip_proto", "drop_ip_hdr", "drop_udp_hdr"} {
		if st[c] != want[c] {
			t.Errorf("%s=%d, want %d", c, st[c], want[c])
		}
	}
}

func TestKVStoreTableFull(t *testing.T) {
	g := startKV(t, newDisk(t, 64), "keys=2", "maxreq=7")
	g.boot()
	g.expect("1 PUT a 1", "1 OK 1\n")
	g.expect("2 INC b", "2 VAL 1\n")
	g.expect("3 PUT c 1", "3 ERR full\n")
	g.expect("4 INC c", "4 ERR full\n")
	g.expect("5 PUT a 2", "5 OK 2\n") // updates still fit
	g.expect("6 INC b", "6 VAL 2\n")
	g.expect("7 GET c", "7 NONE\n")
	if st := g.halt(); st["keys"] != 2 || st["wal_records"] != 4 {
		t.Fatalf("keys=%d wal_records=%d, want 2 and 4: a refused write must not reach the log", st["keys"], st["wal_records"])
	}
}

func TestKVStoreWALFull(t *testing.T) {
	// Header and three records.
	g := startKV(t, newDisk(t, 4), "maxreq=7")
	g.boot()
	g.expect("1 PUT a 1", "1 OK 1\n")
	g.expect("2 INC a", "2 VAL 2\n")
	g.expect("3 PUT b x", "3 OK 1\n")
	g.expect("4 PUT c y", "4 ERR walfull\n")
	g.expect("5 INC a", "5 ERR walfull\n")
	g.expect("6 GET a", "6 VAL 2 2\n")
	g.expect("7 GET c", "7 NONE\n")
	g.halt()
}

// writeLog runs kvstore on a fresh disk with five writes and returns the
// disk: a PUT a one, b two, INC c, INC c, PUT a uno (records 1..5).
func writeLog(t *testing.T) string {
	t.Helper()
	disk := newDisk(t, 128)
	g := startKV(t, disk, "maxreq=5")
	if b := g.boot(); b["wal_replayed"] != "0" {
		t.Fatalf("fresh disk: wal_replayed=%s, want 0", b["wal_replayed"])
	}
	g.expect("1 PUT a one", "1 OK 1\n")
	g.expect("2 PUT b two", "2 OK 1\n")
	g.expect("3 INC c", "3 VAL 1\n")
	g.expect("4 INC c", "4 VAL 2\n")
	g.expect("5 PUT a uno", "5 OK 2\n")
	g.halt()
	return disk
}

func TestKVStoreRestartReplaysLog(t *testing.T) {
	disk := writeLog(t)
	g := startKV(t, disk, "maxreq=4")
	if b := g.boot(); b["wal_replayed"] != "5" || b["keys"] != "3" {
		t.Fatalf("restart: boot line %v, want wal_replayed=5 keys=3", b)
	}
	g.expect("1 GET a", "1 VAL 2 uno\n")
	g.expect("2 GET b", "2 VAL 1 two\n")
	g.expect("3 GET c", "3 VAL 2 2\n")
	g.expect("4 INC c", "4 VAL 3\n")
	g.halt()
	// And the record written after the restart survives the next one.
	g = startKV(t, disk, "maxreq=1")
	if b := g.boot(); b["wal_replayed"] != "6" {
		t.Fatalf("second restart: wal_replayed=%s, want 6", b["wal_replayed"])
	}
	g.expect("1 GET c", "1 VAL 3 3\n")
	g.halt()
}

func TestKVStoreTornTail(t *testing.T) {
	disk := copyDisk(t, writeLog(t))
	b, _ := os.ReadFile(disk)
	// The last write was torn: only its first 64 bytes reached the disk
	// (the rest of sector 5 still holds the zeros from before).
	clear(b[5*512+64 : 6*512])
	if err := os.WriteFile(disk, b, 0o644); err != nil {
		t.Fatal(err)
	}
	g := startKV(t, disk, "maxreq=2")
	if bl := g.boot(); bl["wal_replayed"] != "4" {
		t.Fatalf("torn record 5: wal_replayed=%s, want 4", bl["wal_replayed"])
	}
	if !strings.Contains(strings.Join(g.out, "\n"), "ignored sector 5") {
		t.Errorf("console does not say that sector 5 was ignored:\n%s", strings.Join(g.out, "\n"))
	}
	g.expect("1 GET a", "1 VAL 1 one\n")
	g.expect("2 GET c", "2 VAL 2 2\n")
	g.halt()
}

// TestKVStoreCorruptMiddle damages record 3 of 5. Replay must stop there,
// and once a new record 3 is written, the old records 4 and 5 (valid, same
// log) must not be taken up again: they do not follow the new record 3.
func TestKVStoreCorruptMiddle(t *testing.T) {
	disk := copyDisk(t, writeLog(t))
	b, _ := os.ReadFile(disk)
	b[3*512+100] ^= 0x04
	if err := os.WriteFile(disk, b, 0o644); err != nil {
		t.Fatal(err)
	}
	g := startKV(t, disk, "maxreq=2")
	if bl := g.boot(); bl["wal_replayed"] != "2" {
		t.Fatalf("record 3 corrupt: wal_replayed=%s, want 2", bl["wal_replayed"])
	}
	g.expect("1 PUT c new", "1 OK 1\n")
	g.expect("2 GET a", "2 VAL 1 one\n")
	g.halt()

	g = startKV(t, disk, "maxreq=2")
	if bl := g.boot(); bl["wal_replayed"] != "3" {
		t.Fatalf("after rewriting record 3: wal_replayed=%s, want 3 (old records 4 and 5 must stay dead)", bl["wal_replayed"])
	}
	g.expect("1 GET a", "1 VAL 1 one\n")
	g.expect("2 GET c", "2 VAL 1 new\n")
	g.halt()
}

func TestKVStoreFormatsForeignDisk(t *testing.T) {
	disk := newDisk(t, 16)
	if err := os.WriteFile(disk, bytes.Repeat([]byte{0xff}, 16*512), 0o644); err != nil {
		t.Fatal(err)
	}
	g := startKV(t, disk, "maxreq=2")
	if bl := g.boot(); bl["wal_replayed"] != "0" {
		t.Fatalf("foreign disk: wal_replayed=%s, want 0", bl["wal_replayed"])
	}
	g.expect("1 PUT a 1", "1 OK 1\n")
	g.expect("2 GET a", "2 VAL 1 1\n")
	g.halt()
	g = startKV(t, disk, "maxreq=1")
	if bl := g.boot(); bl["wal_replayed"] != "1" {
		t.Fatalf("after formatting: wal_replayed=%s, want 1 (the 0xff sectors beyond must not count)", bl["wal_replayed"])
	}
	g.expect("1 GET a", "1 VAL 1 1\n")
	g.halt()
}

func TestKVStoreOptions(t *testing.T) {
	g := startKV(t, newDisk(t, 16), "ip=192.168.5.1", "port=9999", "maxreq=1")
	if b := g.boot(); b["ip"] != "192.168.5.1" || b["port"] != "9999" {
		t.Fatalf("boot line %v, want ip=192.168.5.1 port=9999", b)
	}
	p := packet("1 GET a")
	p.DstIP, p.DstPort = ipv4{192, 168, 5, 1}, 9999
	g.send(p.frame())
	r, err := parseUDP(g.recv("the answer on port 9999"))
	if err != nil || r.SrcPort != 9999 || r.SrcIP != (ipv4{192, 168, 5, 1}) || string(r.Payload) != "1 NONE\n" {
		t.Fatalf("answer %+v (err %v): want 1 NONE from 192.168.5.1:9999", r, err)
	}
	g.halt()
}

func TestKVStoreBadConfig(t *testing.T) {
	disk := newDisk(t, 16)
	cases := []struct {
		args []string
		code int
		says string
	}{
		{[]string{"-block", disk, "--", "ip=10.77.0"}, 2, "ip=10.77.0 is not an IPv4 address"},
		{[]string{"-block", disk, "--", "ip=10.77.0.256"}, 2, "is not an IPv4 address"},
		{[]string{"-block", disk, "--", "port=70000"}, 2, "port=70000 is not a number from 1 to 65535"},
		{[]string{"-block", disk, "--", "keys=5000"}, 2, "keys=5000 is not a number from 1 to 4096"},
		{[]string{"-block", disk, "--", "colour=blue"}, 2, `unknown option "colour"`},
		{[]string{}, 1, "attach a disk"},
	}
	for _, c := range cases {
		out, code := runHosted(t, "kvstore", c.args...)
		if code != c.code || !strings.Contains(out, c.says) {
			t.Errorf("kvstore %v: exit %d, console %q; want exit %d and a line saying %q", c.args, code, out, c.code, c.says)
		}
	}
}

// TestKVStoreLostHeader: when the header sector is damaged, kvstore starts
// a new log; the records of the old one that still lie on the disk must not
// be taken up, neither now nor after the new log has grown past them.
func TestKVStoreLostHeader(t *testing.T) {
	disk := copyDisk(t, writeLog(t))
	b, _ := os.ReadFile(disk)
	b[3] ^= 0xff
	if err := os.WriteFile(disk, b, 0o644); err != nil {
		t.Fatal(err)
	}
	g := startKV(t, disk, "maxreq=2")
	if bl := g.boot(); bl["wal_replayed"] != "0" {
		t.Fatalf("damaged header: wal_replayed=%s, want 0", bl["wal_replayed"])
	}
	g.expect("1 GET a", "1 NONE\n")
	g.expect("2 PUT x 1", "2 OK 1\n")
	g.halt()
	g = startKV(t, disk, "maxreq=2")
	if bl := g.boot(); bl["wal_replayed"] != "1" {
		t.Fatalf("new log of one record over an old one of five: wal_replayed=%s, want 1", bl["wal_replayed"])
	}
	g.expect("1 GET b", "1 NONE\n")
	g.expect("2 GET x", "2 VAL 1 1\n")
	g.halt()
}
