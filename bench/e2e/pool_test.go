package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftvm/ftvm/bench/kvclient"
	"github.com/ftvm/ftvm/bench/linearize"
	"github.com/ftvm/ftvm/cluster"
	"github.com/ftvm/ftvm/internal/testutil"
)

// The pool's timing on the bed: each host's registration lease and each
// daemon's arbiter lease.
const (
	poolHostTTL   = 2 * time.Second
	poolDaemonTTL = 2 * time.Second
	// poolRate is each client's load on its VM (three VMs, six daemons
	// and three etcd members share two cores).
	poolRate = 200
)

// TestE2EPool runs `ftvm host` on four hosts (a, b, d, e) sharing a
// three-member etcd cluster, adds three kvstore VMs with `ftvm cluster
// add` (three slots a host), waits until all
// three are protected, puts a client load on each, and SIGKILLs the host
// that holds the most of them, with its daemons (their process group):
// a machine that dies. Every VM it held must be served again and
// protected again on the three hosts left, with no step of the test's
// but waiting; every client's history must be linearizable. It reports
// the time from the kill to each VM protected again, and to all of them.
func TestE2EPool(t *testing.T) {
	testutil.Require(t, testutil.KVM)
	requireBed(t)
	began := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	topo, err := Up(ctx, testPrefix("pool"), WithLogDir(keptDir(t, "logs")), WithEtcd(), WithPool())
	if err != nil {
		t.Fatalf("Up: %v", err)
	}
	t.Cleanup(func() {
		if err := topo.Down(); err != nil {
			t.Errorf("Down: %v", err)
		}
	})
	bin, ftvm := etcdBinary(t), ftvmBinary(t)
	ec, err := StartEtcd(ctx, topo, bin, keptDir(t, "etcd"))
	if err != nil {
		t.Fatal(err)
	}
	defer ec.Close()
	cli, err := ec.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	keys := cluster.Keys{}
	work := keptDir(t, "work")
	var names []string
	for _, h := range PoolHosts {
		names = append(names, string(h))
	}
	if out, err := exec.CommandContext(ctx, ftvm, "certs", "--dir", filepath.Join(work, "certs"), "--hosts", strings.Join(names, ",")).CombinedOutput(); err != nil {
		t.Fatalf("ftvm certs: %v: %s", err, out)
	}
	eps := strings.Join(ec.Endpoints(), ",")
	hosts := map[Host]*Proc{}
	for _, h := range PoolHosts {
		p, err := topo.Start(ctx, h, ftvm, "host", "--name", string(h), "--addr", HostAddr(h).String(),
			"--slots", "3", "--lease-ttl", poolHostTTL.String(), "--etcd-endpoints", eps,
			"--state-dir", filepath.Join(work, "host-"+string(h)), "--tls-dir", filepath.Join(work, "certs"))
		if err != nil {
			t.Fatal(err)
		}
		hosts[h] = p
	}
	var statusOut string
	t.Cleanup(func() {
		if t.Failed() {
			for _, h := range PoolHosts {
				t.Logf("ftvm host on %s:\n%s", h, hosts[h].Tail(30))
				for i := 0; i < PoolVMs; i++ {
					if b, err := os.ReadFile(filepath.Join(work, "host-"+string(h), fmt.Sprintf("vm%d.log", i))); err == nil {
						t.Logf("vm%d's daemon log on %s (tail):\n%s", i, h, tailLines(string(b), 15))
					}
				}
			}
			t.Log(ec.Tail(10))
			t.Logf("last ftvm cluster status:\n%s", statusOut)
		}
		for _, p := range hosts {
			p.Stop(daemonStopGrace)
		}
	})
	clusterStatus := func() string {
		out, err := topo.Run(ctx, Client, ftvm, "cluster", "status", "--etcd-endpoints", eps)
		if err != nil {
			return fmt.Sprintf("ftvm cluster status: %v", err)
		}
		statusOut = string(out)
		return statusOut
	}
	await := func(what string, timeout time.Duration, cond func(*cluster.Pool) bool) *cluster.Pool {
		t.Helper()
		deadline := time.Now().Add(timeout)
		for {
			rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
			p, err := cluster.Read(rctx, cli, keys)
			rcancel()
			if err == nil && cond(p) {
				return p
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within %v (last error %v); ftvm cluster status:\n%s", what, timeout, err, clusterStatus())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	await("four hosts registered", 20*time.Second, func(p *cluster.Pool) bool { return len(p.Hosts) == len(PoolHosts) })

	for i := 0; i < PoolVMs; i++ {
		out, err := topo.Run(ctx, Client, ftvm, "cluster", "add", "--etcd-endpoints", eps,
			"--vm-id", fmt.Sprintf("vm%d", i), "--port", fmt.Sprint(ReplicationPort+i), "--",
			"--guest", guestPath("kvstore"), "--cmdline", "ip="+PoolVMAddr(i),
			"--tap", PoolTAP(i), "--mac", PoolVMMAC(i), "--etcd-lease-ttl", poolDaemonTTL.String())
		if err != nil {
			t.Fatalf("ftvm cluster add: %v\n%s", err, out)
		}
	}
	allProtected := func(p *cluster.Pool) bool {
		n := 0
		for _, v := range p.VMs {
			if v.Protected() {
				n++
			}
		}
		return n == PoolVMs
	}
	p := await("three VMs protected", 60*time.Second, allProtected)
	setupDone := time.Now()
	checkPoolPlacements(t, p)
	t.Logf("all three VMs protected, %v after the start; ftvm cluster status:\n%s", setupDone.Sub(began).Round(time.Millisecond), clusterStatus())

	// A load on each VM, from the client, until the end.
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	results := make([]*kvclient.Result, PoolVMs)
	loadErrs := make([]error, PoolVMs)
	var wg sync.WaitGroup
	for i := 0; i < PoolVMs; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lc := kvclient.Config{Addr: net.JoinHostPort(PoolVMAddr(i), "7000"), RatePerSec: poolRate, Duration: 24 * time.Hour}
			loadErrs[i] = topo.InNamespace(Client, func() error {
				var err error
				results[i], err = kvclient.Run(loadCtx, lc)
				return err
			})
		}()
	}
	time.Sleep(2 * time.Second)

	held := map[string][]string{}
	for _, id := range p.VMIDs() {
		v := p.VMs[id]
		held[v.Place.Primary] = append(held[v.Place.Primary], id+" (primary)")
		held[v.Place.Secondary] = append(held[v.Place.Secondary], id+" (secondary)")
	}
	var victim Host
	for _, h := range PoolHosts {
		if victim == "" || len(held[string(h)]) > len(held[string(victim)]) {
			victim = h
		}
	}
	if !strings.Contains(strings.Join(held[string(victim)], " "), "primary") {
		// Kill a host with a primary on it, so that a take-over is part of it.
		for _, h := range PoolHosts {
			if strings.Contains(strings.Join(held[string(h)], " "), "primary") && len(held[string(h)]) == len(held[string(victim)]) {
				victim = h
				break
			}
		}
	}
	killedAt := time.Now()
	if err := hosts[victim].Kill(); err != nil {
		t.Fatal(err)
	}
	<-hosts[victim].Done()
	t.Logf("host %s SIGKILLed with its daemons at %s; it held %v", victim, killedAt.Format("15:04:05.000"), held[string(victim)])

	protectedAt := map[string]time.Duration{}
	var unprotectedSeen []string
	p = await("every VM protected again on the hosts left", 60*time.Second, func(p *cluster.Pool) bool {
		if _, ok := p.Hosts[string(victim)]; ok {
			return false
		}
		for _, id := range p.VMIDs() {
			v := p.VMs[id]
			on := v.Place != nil && (v.Place.Primary == string(victim) || v.Place.Secondary == string(victim))
			if !v.Protected() || on {
				if !contains(unprotectedSeen, id) {
					unprotectedSeen = append(unprotectedSeen, id)
				}
				delete(protectedAt, id)
				continue
			}
			if _, ok := protectedAt[id]; !ok {
				protectedAt[id] = time.Since(killedAt)
			}
		}
		return len(protectedAt) == PoolVMs
	})
	allBack := time.Since(killedAt)
	checkPoolPlacements(t, p)
	status := clusterStatus()
	t.Logf("every VM protected again %v after the kill; ftvm cluster status:\n%s", allBack.Round(time.Millisecond), status)
	if !strings.Contains(status, "unprotected now: none") || strings.Contains(status, "\n"+string(victim)+" ") {
		t.Errorf("ftvm cluster status after re-protection lists unprotected VMs or the dead host:\n%s", status)
	}
	for _, h := range held[string(victim)] {
		id, _, _ := strings.Cut(h, " ")
		if !contains(unprotectedSeen, id) {
			t.Errorf("%s was on the dead host but never seen unprotected after the kill", id)
		}
		t.Logf("%s, which the dead host held as %s, protected again %v after the kill (gen %d: primary %s, secondary %s)",
			id, strings.TrimSuffix(strings.TrimPrefix(h, id+" ("), ")"), protectedAt[id].Round(time.Millisecond), p.VMs[id].Place.Gen, p.VMs[id].Place.Primary, p.VMs[id].Place.Secondary)
	}

	time.Sleep(time.Second) // load on the re-protected pairs
	stopLoad()
	wg.Wait()
	for i := 0; i < PoolVMs; i++ {
		if loadErrs[i] != nil {
			t.Fatalf("load on vm%d: %v", i, loadErrs[i])
		}
		res := results[i]
		servedAfter := 0
		var lastBefore, firstAfter time.Duration = -1, -1
		for _, op := range res.History {
			if op.Outcome == linearize.Unknown {
				continue
			}
			at := res.Origin.Add(time.Duration(op.Complete))
			if at.Before(killedAt) {
				lastBefore = at.Sub(killedAt)
			} else {
				servedAfter++
				if firstAfter < 0 {
					firstAfter = at.Sub(killedAt)
				}
			}
		}
		if servedAfter == 0 {
			t.Errorf("vm%d: no request served after the kill", i)
		}
		if err := linearize.Check(res.History); err != nil {
			t.Errorf("vm%d: the client's history is not linearizable: %v", i, err)
		}
		t.Logf("vm%d: %d requests sent, %d served, %d after the kill; first reply %v after the kill (last before: %v)",
			i, res.Stats.Sent, res.Stats.Served, servedAfter, firstAfter.Round(time.Millisecond), lastBefore.Round(time.Millisecond))
	}
	t.Logf("times: set-up %v, from the kill to every VM protected again %v, whole test %v",
		setupDone.Sub(began).Round(time.Millisecond), allBack.Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
}

// checkPoolPlacements: each VM's primary and secondary on two different
// live hosts, no host over its three slots.
func checkPoolPlacements(t *testing.T, p *cluster.Pool) {
	t.Helper()
	used := map[string]int{}
	for _, id := range p.VMIDs() {
		v := p.VMs[id]
		if v.Place == nil || v.Place.Primary == v.Place.Secondary || v.Place.Secondary == "" {
			t.Errorf("%s placed %+v: want a primary and a secondary on two hosts", id, v.Place)
			continue
		}
		for _, h := range []string{v.Place.Primary, v.Place.Secondary} {
			if _, ok := p.Hosts[h]; !ok {
				t.Errorf("%s placed on %s, which is not a live host", id, h)
			}
			used[h]++
		}
	}
	for h, n := range used {
		if n > 3 {
			t.Errorf("host %s holds %d daemons, over its 3 slots", h, n)
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
