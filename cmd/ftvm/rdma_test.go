package main

import (
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
