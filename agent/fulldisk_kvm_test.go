package agent

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ftvm/ftvm/internal/netframe"
	"github.com/ftvm/ftvm/internal/testutil"
	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/lockstep/wire"
	"github.com/ftvm/ftvm/vmm"
	"golang.org/x/sys/unix"
)

// Sizes of the full-disk test: a sparse kvstore disk on a tmpfs that a
// filler file then fills, so that the guest's next write-ahead log
// records find no page to land on (what a full filesystem, a thin
// volume or a copy-on-write one does to a preallocated disk).
const (
	fullDiskTmpfsOpts   = "size=8m"
	fullDiskBytes       = 4 << 20
	fullDiskPuts        = 240
	fullDiskFillAt      = 80                     // PUTs answered before the tmpfs is filled
	fullDiskFailingHold = 500 * time.Millisecond // how long the disk stays full once a write failed
	fullDiskReplyWait   = 200 * time.Millisecond // before a request is sent again
)

// mountTmpfs mounts a small tmpfs for the test and unmounts it after.
func mountTmpfs(t *testing.T, opts string) string {
	t.Helper()
	testutil.Require(t, testutil.Root)
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, opts); err != nil {
		t.Fatalf("mounting a tmpfs (%s) on %s: %v", opts, dir, err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

// fillFilesystem writes path until its filesystem is full.
func fillFilesystem(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for i := range buf {
		buf[i] = 0xa5
	}
	for {
		if _, err := f.Write(buf); err != nil {
			if errors.Is(err, unix.ENOSPC) {
				break
			}
			t.Fatalf("filling the tmpfs: %v", err)
		}
	}
	// The last partial write may have left a page: fill it byte-wise.
	for {
		if _, err := f.Write(buf[:512]); err != nil {
			break
		}
	}
}

// kvRequest sends req until a reply with its id comes back or the
// deadline passes; it returns the reply after the id ("OK 1", ...).
func kvRequest(conn *net.UDPConn, nic *net.UDPAddr, id uint64, req string, deadline time.Time) (string, error) {
	f := netframe.UDP4(vmm.DefaultMAC, [6]byte{2, 0, 0, 0, 0, 0x42}, [4]byte{10, 77, 0, 1}, [4]byte{10, 77, 0, 2}, 40000, 7000, []byte(fmt.Sprintf("%d %s", id, req)))
	prefix := fmt.Sprintf("%d ", id)
	buf := make([]byte, 2048)
	for time.Now().Before(deadline) {
		if _, err := conn.WriteToUDP(f, nic); err != nil {
			return "", err
		}
		resend := time.Now().Add(fullDiskReplyWait)
		for {
			conn.SetReadDeadline(resend)
			n, _, err := conn.ReadFromUDP(buf)
			if err != nil {
				break // no reply in time: send again
			}
			if n < 42 || buf[12] != 0x08 || buf[13] != 0 || buf[23] != 17 {
				continue // not IPv4/UDP (an ARP, say)
			}
			end := min(n, 34+int(binary.BigEndian.Uint16(buf[38:]))) // the UDP length: frames are padded
			if r := strings.TrimSpace(string(buf[42:max(42, end)])); strings.HasPrefix(r, prefix) {
				return strings.TrimPrefix(r, prefix), nil
			}
		}
	}
	return "", fmt.Errorf("no reply to %q", req)
}

// TestKVMFullDiskLosesNoAcknowledgedPUT fills the filesystem under the
// primary's disk while a client writes to kvstore, then frees it. Every
// PUT answered OK must be on the disk afterwards (read back by a fresh
// kvstore booted from it): a write the host cannot make durable pauses
// the VM, and no reply behind it leaves, until the write succeeds. The
// failure shows in Stats and DiskError while it lasts. (It used to be
// logged and forgotten: about 6,100 PUTs answered OK were not on a full
// disk.)
func TestKVMFullDiskLosesNoAcknowledgedPUT(t *testing.T) {
	image := guestImage(t, "kvstore")
	tmpfs := mountTmpfs(t, fullDiskTmpfsOpts)
	client, nic := kvstoreNIC(t)
	disks := pairDisks(t, fullDiskBytes, map[wire.Role]string{wire.RolePrimary: tmpfs})
	devices := kvstoreDevices(disks, nic)
	ctx, cancel := context.WithTimeout(context.Background(), testRunTimeout)
	defer cancel()
	p := startPairWith(t, ctx, lockstep.AckOnReceipt, 0, image, "", devices)

	filler := filepath.Join(tmpfs, "filler")
	var sawFailing atomic.Bool
	var diskErr atomic.Value
	var secHeard, priReleased atomic.Uint64
	freed := make(chan struct{})
	acked := map[int]bool{}
	deadline := time.Now().Add(testRunTimeout / 2)
	for i := 0; i < fullDiskPuts; i++ {
		if i == fullDiskFillAt {
			fillFilesystem(t, filler)
			go func() {
				defer close(freed)
				for p.pri.Stats().DiskWriteErrors == 0 {
					if time.Now().After(deadline) {
						return
					}
					time.Sleep(time.Millisecond)
				}
				sawFailing.Store(true)
				diskErr.Store(p.pri.DiskError()) // the first attempt failed: still failing
				time.Sleep(fullDiskFailingHold)
				// Heartbeats went out meanwhile: the secondary must not
				// have heard that the failing write (or anything after
				// it) is out, or it would drop its copy of it.
				secHeard.Store(p.sec.Status().Released)
				priReleased.Store(p.pri.Status().Released)
				os.Remove(filler)
			}()
		}
		r, err := kvRequest(client, nic.LocalAddr(), uint64(i+1), fmt.Sprintf("PUT k%d v%d", i, i), deadline)
		if err != nil {
			t.Fatalf("PUT %d: %v (primary %+v, disk error %q)", i, err, p.pri.Stats(), p.pri.DiskError())
		}
		if strings.HasPrefix(r, "OK ") {
			acked[i] = true
		}
	}
	<-freed
	if !sawFailing.Load() {
		t.Fatalf("no block write failed on the full tmpfs (primary %+v): the test did not fill the disk", p.pri.Stats())
	}
	st, stErr := p.pri.Stats(), p.pri.DiskError()
	p.pri.Stop()
	if err := waitErr(t, "primary", p.priErr); err != nil {
		t.Fatalf("primary: %v", err)
	}
	p.sec.Stop()
	waitErr(t, "secondary", p.secErr)
	if len(acked) < fullDiskPuts/2 {
		t.Fatalf("only %d of %d PUTs answered OK", len(acked), fullDiskPuts)
	}

	// A fresh kvstore, live, from the primary's disk: every PUT it
	// answered OK must be there.
	client2, nic2 := kvstoreNIC(t)
	m, err := vmm.New(vmm.Config{MemSizeBytes: testMemBytes, Disk: disks[wire.RolePrimary], NIC: nic2,
		Cmdline: fmt.Sprintf("maxreq=%d", fullDiskPuts)})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Load(image); err != nil {
		t.Fatal(err)
	}
	if err := m.Resume(0); err != nil {
		t.Fatal(err)
	}
	lost := 0
	for i := 0; i < fullDiskPuts; i++ {
		r, err := kvRequest(client2, nic2.LocalAddr(), uint64(100000+i), fmt.Sprintf("GET k%d", i), time.Now().Add(testRunTimeout/4))
		if err != nil {
			t.Fatalf("GET k%d from the restarted kvstore: %v", i, err)
		}
		if acked[i] && !(strings.HasPrefix(r, "VAL ") && strings.HasSuffix(r, fmt.Sprintf(" v%d", i))) {
			if lost == 0 {
				t.Errorf("PUT k%d v%d was answered OK but the disk has %q", i, i, r)
			}
			lost++
		}
	}
	if lost > 0 {
		t.Fatalf("%d of %d PUTs answered OK are missing from the disk", lost, len(acked))
	}
	if e, _ := diskErr.Load().(string); !strings.Contains(e, "no space left") {
		t.Fatalf("DiskError while the disk was full: %q, want the ENOSPC", e)
	}
	if h, r := secHeard.Load(), priReleased.Load(); h >= r {
		t.Fatalf("while a write failed, the secondary heard released through %d, the primary had handed out through %d: released-through passed what was durable", h, r)
	}
	if st.DiskFailing || stErr != "" {
		t.Fatalf("after space returned: %+v, DiskError %q; want nothing failing", st, stErr)
	}
	t.Logf("%d PUTs answered OK, all on the disk; primary %+v", len(acked), st)
}
