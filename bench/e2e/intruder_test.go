package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/tcpfallback"
	"github.com/ftvm/ftvm/transport"
)

// intruderTries is how many times the intruder dials the primary.
const intruderTries = 5

// TestE2EIntruder (issue 15, item 1): a host with a certificate from the
// pair's own CA, but for another name (x), dials the protected primary as
// VM kvstore, again and again. It must be refused every time, the pair
// must stay protected in the same epoch, and nobody may halt: before the
// fix its connection replaced the secondary's, and the real secondary
// lost the arbiter race and exited with code 3.
func TestE2EIntruder(t *testing.T) {
	c := newTestCluster(t, "intruder", ClusterConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := c.StartPrimary(HostA); err != nil {
		t.Fatal(err)
	}
	if _, err := c.StartSecondary(HostB, HostA); err != nil {
		t.Fatal(err)
	}
	before, err := c.Await(ctx, HostA, "protected", Protected)
	if err != nil {
		t.Fatal(err)
	}

	certs := c.path("certs")
	// ftvm certs keeps the CA's key apart, in certs-ca-key.
	if err := tcpfallback.AddTestCertificateApart(certs, certs+"-ca-key", "x"); err != nil {
		t.Fatal(err)
	}
	tlsX, err := tcpfallback.LoadTLSConfig(certs, "x")
	if err != nil {
		t.Fatal(err)
	}
	tlsX.ServerName = string(HostA)
	addr := net.JoinHostPort(HostAddr(HostA).String(), fmt.Sprint(ReplicationPort))
	for i := range intruderTries {
		// From the secondary's own network namespace: the address does
		// not tell the intruder apart, only its certificate does.
		err := c.Topo.InNamespace(HostB, func() error {
			dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			tr, err := tcpfallback.Dial(dctx, addr, tcpfallback.Config{VMID: VMID, TLS: tlsX, OnFrame: func(tcpfallback.Frame) {}})
			if err == nil {
				tr.Close()
				return errors.New("the primary accepted a peer whose certificate names x")
			}
			if !errors.Is(err, transport.ErrRefused) || !strings.Contains(err.Error(), `"x"`) {
				return fmt.Errorf("want a refusal naming x, got: %w", err)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("intruder dial %d: %v", i+1, err)
		}
	}

	// A displaced secondary would notice within its peer timeout (120 ms)
	// and ask the arbiter; give that several times over to happen.
	time.Sleep(time.Second)
	for _, h := range []Host{HostA, HostB} {
		select {
		case <-c.Daemon(h).Proc.Done():
			t.Fatalf("host %s's daemon exited after the intruder: %v\n%s", h, c.Daemon(h).Proc, c.Daemon(h).Proc.Tail(30))
		default:
		}
	}
	after, err := c.Await(ctx, HostA, "protected", Protected)
	if err != nil {
		t.Fatal(err)
	}
	if after.Epoch != before.Epoch {
		t.Errorf("epoch went from %d to %d: the intruder caused a failover", before.Epoch, after.Epoch)
	}
	if s, err := c.Status(ctx, HostB); err != nil || s.Role != "secondary" {
		t.Errorf("host b after the intruder: %+v, %v; want the secondary still", s, err)
	}
	log, err := os.ReadFile(c.Daemon(HostA).Proc.StderrPath())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(log), "refused a connection") || !strings.Contains(string(log), "x") {
		t.Errorf("the primary's log does not show the refusal at WARN:\n%s", c.Daemon(HostA).Proc.Tail(20))
	}
}
