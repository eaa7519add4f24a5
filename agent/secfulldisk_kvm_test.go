package agent

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/lockstep/wire"
	"golang.org/x/sys/unix"
)

// TestKVMSecondaryFullDiskKeepsThePrimaryServing fills the filesystem
// under the secondary's own disk (separate storage) while a client writes
// to kvstore through the primary. The secondary's persists fail and its
// VM pauses, so it lags, and the primary stalls once the lag is a log
// window: a secondary's full disk used to take the primary's service
// down for as long as it lasted. Now the secondary leaves the pair once
// its write has failed for Config.SecondaryDiskFailingMax (3 peer
// timeouts here): Run returns ErrSecondaryDiskFailing, its transport is
// closed (as the daemon does when it exits with it), and the primary
// goes on unprotected and answers every PUT.
func TestKVMSecondaryFullDiskKeepsThePrimaryServing(t *testing.T) {
	image := guestImage(t, "kvstore")
	tmpfs := mountTmpfs(t, fullDiskTmpfsOpts)
	client, nic := kvstoreNIC(t)
	disks := pairDisks(t, fullDiskBytes, map[wire.Role]string{wire.RoleSecondary: tmpfs})
	devices := kvstoreDevices(disks, nic)
	ctx, cancel := context.WithTimeout(context.Background(), testRunTimeout)
	defer cancel()
	p := startPairConfig(t, ctx, lockstep.AckOnReceipt, 0, image, "", devices, func(_ wire.Role, c *Config) { c.SeparateStorage = true })
	secLeft := make(chan error, 1)
	go func() {
		err := <-p.secErr
		p.secTr.Close() // what the daemon's exit does
		secLeft <- err
	}()

	// A stalled primary answers nothing: a bound for the whole run of
	// PUTs, far above what a leaving secondary costs.
	deadline := time.Now().Add(testRunTimeout / 4)
	for i := 0; i < fullDiskPuts; i++ {
		if i == fullDiskFillAt {
			// The restore reserved the secondary's disk; give its
			// blocks back first, as a thin or copy-on-write volume
			// has none in reserve, then fill the filesystem.
			if err := unix.Fallocate(int(disks[wire.RoleSecondary].Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, fullDiskBytes); err != nil {
				t.Fatal(err)
			}
			fillFilesystem(t, filepath.Join(tmpfs, "filler"))
		}
		r, err := kvRequest(client, nic.LocalAddr(), uint64(i+1), fmt.Sprintf("PUT k%d v%d", i, i), deadline)
		if err != nil {
			t.Fatalf("PUT %d: %v: the primary stopped serving (primary %+v %+v; secondary %+v, disk error %q)",
				i, err, p.pri.Status(), p.pri.Stats(), p.sec.Stats(), p.sec.DiskError())
		}
		if !strings.HasPrefix(r, "OK ") {
			t.Fatalf("PUT %d answered %q, want OK: the primary's disk has room", i, r)
		}
	}
	var secErr error
	select {
	case secErr = <-secLeft:
	case <-time.After(testRunTimeout / 4):
		t.Fatalf("the secondary is still running (%+v, disk error %q); want it to leave the pair", p.sec.Stats(), p.sec.DiskError())
	}
	if !errors.Is(secErr, ErrSecondaryDiskFailing) || !strings.Contains(secErr.Error(), "no space left") {
		t.Fatalf("secondary's Run: %v; want ErrSecondaryDiskFailing naming the ENOSPC", secErr)
	}
	if p.sec.Stats().DiskWriteErrors == 0 {
		t.Fatal("the secondary counted no failed write: the test did not fill its disk")
	}
	if p.pri.Stats().Stalls == 0 {
		t.Fatal("the primary never stalled: the test did not make the secondary lag a window")
	}
	// The primary ends unprotected, not stalled, and goes on serving.
	waitFor(t, func() bool {
		s := p.pri.Status()
		return s.Role == lockstep.RolePrimary && !s.Protected && !s.Stalled
	})
	if r, err := kvRequest(client, nic.LocalAddr(), 1<<20, "GET k0", time.Now().Add(testRunTimeout/4)); err != nil || r != "VAL 1 v0" && !strings.HasSuffix(r, " v0") {
		t.Fatalf("GET k0 from the unprotected primary: %q, %v", r, err)
	}
	st := p.pri.Status()
	p.pri.Stop()
	if err := waitErr(t, "primary", p.priErr); err != nil {
		t.Fatalf("primary: %v", err)
	}
	t.Logf("%d PUTs answered OK; the secondary left: %v; primary %+v", fullDiskPuts, secErr, st)
}
