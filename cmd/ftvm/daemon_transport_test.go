package main

import (
	"bytes"
	"errors"
	"flag"
	"strings"
	"testing"

	"github.com/ftvm/ftvm/lockstep/wire"
	"github.com/ftvm/ftvm/rdma"
	"github.com/ftvm/ftvm/rdma/shm"
)

func transportFlags(t *testing.T, args ...string) (*daemonConfig, error) {
	t.Helper()
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	finish := daemonFlags(fs, wire.RolePrimary)
	if err := fs.Parse(append([]string{"--vm-id", "v", "--arbiter-dir", t.TempDir(), "--psk-file", "x"}, args...)); err != nil {
		return nil, err
	}
	return finish()
}

// --transport picks the control lane's memory and says why; auto without
// an RDMA device falls back to TCP and says that it did, rdma without one
// is an error that says what to do.
func TestTransportChoice(t *testing.T) {
	for _, tc := range []struct {
		flag, peer, want, why string
	}{
		{"tcp", "10.0.0.1:7070", "tcp", "--transport tcp"},
		{"shm", "10.0.0.1:7070", "shm", "shared memory"},
		{"auto", "10.0.0.1:7070", "tcp", "no RDMA device on the route to 10.0.0.1"},
		{"auto", "", "tcp", "no RDMA device on this host"},
	} {
		c, err := transportFlags(t, "--transport", tc.flag)
		if err != nil {
			t.Fatal(err)
		}
		p, why, err := c.chooseProvider(tc.peer)
		if err != nil {
			t.Fatalf("--transport %s: %v", tc.flag, err)
		}
		if got := providerName(p); got != tc.want || !strings.Contains(why, tc.why) {
			t.Errorf("--transport %s, peer %q: %s (%s), want %s with %q", tc.flag, tc.peer, got, why, tc.want, tc.why)
		}
	}
	c, _ := transportFlags(t, "--transport", "rdma")
	if _, _, err := c.chooseProvider("10.0.0.1:7070"); err == nil || !strings.Contains(err.Error(), "--transport auto") {
		t.Fatalf("--transport rdma with no device: %v, want an error pointing to auto or tcp", err)
	}
	// A device found: auto takes it.
	defer func(f func(string) (rdma.Provider, error)) { rdmaForPeer = f }(rdmaForPeer)
	rdmaForPeer = func(string) (rdma.Provider, error) { return shm.Provider{}, nil }
	c, _ = transportFlags(t, "--transport", "auto")
	if p, why, err := c.chooseProvider("10.0.0.1:7070"); err != nil || p == nil || !strings.Contains(why, "an RDMA device") {
		t.Fatalf("auto with a device: %v, %q, %v", p, why, err)
	}
	rdmaForPeer = func(string) (rdma.Provider, error) { return nil, errors.New("no device") }
	for _, bad := range [][]string{{"--transport", "udp"}, {"--shm-dir", "/tmp", "--transport", "tcp"}, {"--ring-spin", "-1s"}} {
		if _, err := transportFlags(t, bad...); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}

// ftvm status names the transport in use and why.
func TestStatusShowsTransport(t *testing.T) {
	var b bytes.Buffer
	printStatus(&b, &statusReport{VMID: "v", Role: "primary", Transport: "shm", TransportWhy: "shm ring of 1048576 bytes each way"})
	if out := b.String(); !strings.Contains(out, "transport: shm (shm ring of 1048576 bytes each way)") {
		t.Fatalf("status:\n%s\nwant the transport shown", out)
	}
}
