package main

import (
	"errors"
	"strings"
	"testing"

	"github.com/ftvm/ftvm/internal/testutil"
	"github.com/ftvm/ftvm/rdma/verbs"
)

func TestRdmaDevicesUsage(t *testing.T) {
	cases := []struct {
		args     []string
		code     int
		inStdout string
		inStderr string
	}{
		{[]string{"rdma"}, exitUsage, "", "devices"},
		{[]string{"rdma", "devices", "--help"}, exitOK, "", "usage: ftvm rdma devices"},
		{[]string{"rdma", "devices", "--peer", "not-an-address"}, exitUsage, "", `--peer "not-an-address" is not an IP address`},
		{[]string{"rdma", "devices", "extra"}, exitUsage, "", "unexpected arguments"},
	}
	for _, c := range cases {
		code, out, errs := runFtvm(c.args...)
		if code != c.code || !strings.Contains(out, c.inStdout) || !strings.Contains(errs, c.inStderr) {
			t.Errorf("ftvm %q: exit %d, stdout %q, stderr %q; want exit %d with %q on stdout and %q on stderr",
				c.args, code, out, errs, c.code, c.inStdout, c.inStderr)
		}
	}
}

// ftvm rdma devices lists what sysfs has, or says clearly that there is
// nothing, and --peer says why a loopback peer is not reachable over RDMA.
func TestRdmaDevicesListing(t *testing.T) {
	devs, err := verbs.Devices()
	if err != nil {
		t.Fatal(err)
	}
	code, out, errs := runFtvm("rdma", "devices", "--peer", "127.0.0.1")
	if code != exitFailure {
		t.Errorf("exit %d, want %d: a peer on lo is never reachable over RDMA", code, exitFailure)
	}
	if !strings.Contains(out, "peer 127.0.0.1: not over RDMA: ") {
		t.Errorf("stdout %q does not say why 127.0.0.1 is not over RDMA", out)
	}
	if want := "built without RDMA support"; !verbs.Supported && !strings.Contains(out, want) {
		t.Errorf("stdout %q does not say %q", out, want)
	}
	if testutil.Check(testutil.RDMA) != nil {
		if !strings.Contains(errs, "no RDMA device") {
			t.Errorf("with no device, stderr %q does not say so", errs)
		}
		return
	}
	for _, d := range devs {
		if !strings.Contains(out, d.Name+"\n") {
			t.Errorf("device %s is not listed in %q", d.Name, out)
		}
	}
}

// The daemon's --transport rdma and auto get their provider from
// verbsForPeer, which says why a peer on lo has none.
func TestVerbsForPeerRefusesLoopback(t *testing.T) {
	p, err := rdmaForPeer("127.0.0.1:7000")
	if err == nil || p != nil {
		t.Fatalf("rdmaForPeer(127.0.0.1:7000) = %v, %v; want an error: lo has no RDMA device", p, err)
	}
	if !verbs.Supported && !errors.Is(err, verbs.ErrNotBuilt) {
		t.Fatalf("in a build without RDMA support the error is %v, want ErrNotBuilt", err)
	}
	if _, err := rdmaForPeer("no-such-host.invalid:7000"); err == nil {
		t.Fatalf("rdmaForPeer of an unresolvable host succeeded")
	}
}
