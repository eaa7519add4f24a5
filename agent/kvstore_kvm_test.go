package agent

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/internal/netframe"
	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/lockstep/arbiter"
	"github.com/ftvm/ftvm/lockstep/wire"
	"github.com/ftvm/ftvm/transport"
	"github.com/ftvm/ftvm/vmm"
)

// TestKVMPairKVStore runs kvstore under a primary and a secondary: its
// inputs (NIC frames, NIC waits, the MAC, block reads of its write-ahead
// log) are recorded live on the primary and replayed from the log on the
// secondary, and its outputs (reply frames, log writes, console) are held
// until the secondary reproduced them. A client's request gets its reply
// only through that release.
func TestKVMPairKVStore(t *testing.T) { kvstorePairRun(t, 4<<20, "", 20) }

// TestKVMPairKVStoreCompacts is TestKVMPairKVStore on a disk so small
// (keys=3: a one-sector table, ten log sectors) that kvstore compacts its
// log twice: the compaction's writes (table, header) are outputs like any
// other, and the replica must make them byte for byte.
func TestKVMPairKVStoreCompacts(t *testing.T) { kvstorePairRun(t, 14*512, "keys=3", 50) }

func kvstorePairRun(t *testing.T, diskBytes int64, cmdline string, requests int) {
	image := guestImage(t, "kvstore")
	client, nic := kvstoreNIC(t)
	devices := kvstoreDevices(pairDisks(t, diskBytes, nil), nic)
	ctx, cancel := context.WithTimeout(context.Background(), testRunTimeout)
	defer cancel()
	p := startPairWith(t, ctx, lockstep.AckOnCompare, 0, image, strings.TrimSpace(fmt.Sprintf("%s maxreq=%d", cmdline, requests)), devices)
	kv := &udpKVClient{conn: client, nic: nic.LocalAddr()}
	for i := 1; i <= requests; i++ {
		req := fmt.Sprintf("%d PUT k%d v%d", i, i%3, i)
		if i%2 == 0 {
			req = fmt.Sprintf("%d GET k%d", i, (i-1)%3)
		}
		want := fmt.Sprintf("%d VAL", i)
		if i%2 == 1 {
			want = fmt.Sprintf("%d OK", i)
		}
		if got := kv.do(t, req); !strings.HasPrefix(got, want) {
			t.Fatalf("request %q got %q, want %q...", req, got, want)
		}
	}
	if err := waitErr(t, "primary", p.priErr); err != nil {
		t.Fatalf("primary: %v", err)
	}
	p.sec.Stop()
	if err := waitErr(t, "secondary", p.secErr); err != nil {
		t.Fatalf("secondary: %v", err)
	}
	if v := p.violations(); len(v) > 0 {
		t.Fatalf("%d console releases broke ack-on-compare; first: %s", len(v), v[0])
	}
	ps, ss := p.pri.Stats(), p.sec.Stats()
	// Ack-on-compare and a primary that finished with nothing held: the
	// secondary reproduced every reply, which it could only do from the
	// request frames it got through the log.
	if ss.Divergences != 0 || ps.Released < uint64(requests) {
		t.Fatalf("want no divergence and at least %d released replies: primary %+v secondary %+v", requests, ps, ss)
	}
	t.Logf("console %q...; primary %+v, secondary %+v", head(p.priOut.String()), ps, ss)
	if strings.Contains(cmdline, "keys=3") && !strings.Contains(p.priOut.String(), "wal_compactions=2") {
		t.Fatalf("kvstore did not compact its log twice: %q", p.priOut.String())
	}
}

// udpKVClient wraps kvstore requests in Ethernet/IPv4/UDP frames sent to a
// UDP NIC, as a host on the guest's network would (kvstore: 10.77.0.2:7000).
type udpKVClient struct {
	conn    *net.UDPConn
	nic     *net.UDPAddr
	timeout time.Duration // for each reply; zero: kvReplyTimeout
}

const kvReplyTimeout = 60 * time.Second

func (c *udpKVClient) do(t *testing.T, req string) string {
	t.Helper()
	f := netframe.UDP4(vmm.DefaultMAC, [6]byte{2, 0, 0, 0, 0, 0x42}, [4]byte{10, 77, 0, 1}, [4]byte{10, 77, 0, 2}, 40000, 7000, []byte(req))
	if _, err := c.conn.WriteToUDP(f, c.nic); err != nil {
		t.Fatalf("send: %v", err)
	}
	buf := make([]byte, 2048)
	timeout := c.timeout
	if timeout == 0 {
		timeout = kvReplyTimeout
	}
	deadline := time.Now().Add(timeout)
	for {
		c.conn.SetReadDeadline(deadline)
		n, _, err := c.conn.ReadFromUDP(buf)
		if err != nil {
			t.Fatalf("no reply to %q: %v", req, err)
		}
		if n < 42 || binary.BigEndian.Uint16(buf[12:]) != 0x0800 || buf[23] != 17 {
			continue // not IPv4/UDP (an ARP, say)
		}
		return strings.TrimSpace(string(buf[42:n]))
	}
}

// discardTransport is the transport of a primary no secondary ever joins.
type discardTransport struct{}

func (discardTransport) Send(transport.Type, []byte) error { return nil }

// TestKVMLonePrimaryServes runs a primary that no secondary joins, as the
// README's first command does: it must boot its guest and serve at once
// (issue 15: the vCPU waited for a command that only a joining secondary
// brought).
func TestKVMLonePrimaryServes(t *testing.T) {
	image := guestImage(t, "kvstore")
	client, nic := kvstoreNIC(t)
	disk := pairDisks(t, 4<<20, nil)[wire.RolePrimary]
	arb, err := arbiter.NewFile(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var out lockedBuffer
	a, err := New(Config{
		Node: nodeConfig(wire.RolePrimary, lockstep.AckOnReceipt, 0),
		NewVM: func(h vmm.ExitHook) (VM, error) {
			return vmm.New(vmm.Config{MemSizeBytes: testMemBytes, Console: &out, Hook: h, NIC: nic, Disk: disk})
		},
		Boot:            func(vm VM) error { return vm.(*vmm.Machine).Load(image) },
		Arbiter:         arb,
		TickInterval:    testTick,
		SeparateStorage: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testRunTimeout)
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- a.Run(ctx, discardTransport{}) }()
	defer func() {
		a.Stop()
		if err := <-runErr; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	// The guest boots in a few milliseconds; a second bounds it loosely
	// (a primary that waits for a secondary never answers at all).
	kv := &udpKVClient{conn: client, nic: nic.LocalAddr(), timeout: time.Second}
	if got := kv.do(t, "1 PUT k v"); !strings.HasPrefix(got, "1 OK") {
		t.Fatalf("PUT answered %q, want 1 OK", got)
	}
	if got := kv.do(t, "2 GET k"); !strings.HasPrefix(got, "2 VAL 1 v") {
		t.Fatalf("GET answered %q, want 2 VAL 1 v", got)
	}
	if st := a.Status(); st.Role != lockstep.RolePrimary || st.Epoch != 1 || st.Protected {
		t.Fatalf("status %+v: want an unprotected primary at epoch 1", st)
	}
}

// kvstoreNIC opens a UDP client socket and the UDP NIC that carries its
// frames to a kvstore guest (udpKVClient's two ends); both close with t.
func kvstoreNIC(t *testing.T) (*net.UDPConn, *vmm.UDPNIC) {
	t.Helper()
	client, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	nic, err := vmm.ListenUDPNIC("127.0.0.1:0", client.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nic.Close() })
	return client, nic
}

// pairDisks creates a sparse disk of size bytes for each role, in the
// directory given for it (a fresh temporary one where none is); they
// close with t.
func pairDisks(t *testing.T, size int64, dirs map[wire.Role]string) map[wire.Role]*os.File {
	t.Helper()
	disks := map[wire.Role]*os.File{}
	for _, r := range []wire.Role{wire.RolePrimary, wire.RoleSecondary} {
		dir := dirs[r]
		if dir == "" {
			dir = t.TempDir()
		}
		f, err := os.Create(filepath.Join(dir, "disk"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		if err := f.Truncate(size); err != nil { // sparse: pages come as it is written
			t.Fatal(err)
		}
		disks[r] = f
	}
	return disks
}

// kvstoreDevices gives each side its disk and the primary the NIC; the
// secondary's NIC stays unplugged: its inputs come from the log.
func kvstoreDevices(disks map[wire.Role]*os.File, nic vmm.NICBackend) func(wire.Role, *vmm.Config) {
	return func(role wire.Role, c *vmm.Config) {
		c.Disk = disks[role]
		if role == wire.RolePrimary {
			c.NIC = nic
		}
	}
}
