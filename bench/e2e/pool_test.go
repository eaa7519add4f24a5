package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftvm/ftvm/bench/kvclient"
	"github.com/ftvm/ftvm/bench/linearize"
	"github.com/ftvm/ftvm/cluster"
)

// The pool's timing on the bed: each host's registration lease and each
// daemon's arbiter lease. 3 s, not etcd's shortest: a CI run once lost a
// surviving host's 2 s lease beside four hosts, six daemons and three
// etcd members on two cores, and with it (before hosts kept their daemons
// through a lost lease) the VM it served.
const (
	poolHostTTL   = 3 * time.Second
	poolDaemonTTL = 3 * time.Second
	// poolRate is each client's load on its VM (three VMs, six daemons
	// and three etcd members share two cores).
	poolRate = 200
	// poolKills is how many hosts die, one after the other, each once
	// every VM is protected again: four hosts of three slots hold three
	// pairs down to two hosts.
	poolKills = 2
)

// TestE2EPool runs `ftvm host` on four hosts (a, b, d, e) sharing a
// three-member etcd cluster, adds three kvstore VMs with `ftvm cluster
// add` (three slots a host), waits until all three are protected, puts a
// client load on each, and then, twice, SIGKILLs a host with its daemons
// (their process group), as a machine dies: first the host with the most
// primaries (its VMs' secondaries must take over and get new
// secondaries), then one that holds only secondaries where there is one
// (its VMs get new secondaries). After each kill every VM the dead host
// held must be served again and protected again on the hosts left, with
// nothing done but waiting, and `ftvm cluster status` must list no
// unprotected VM; every client's history must be linearizable. It
// reports the time from each kill to every VM protected again.
func TestE2EPool(t *testing.T) {
	began := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bed := startEtcdBed(ctx, t, "pool", WithPool())
	topo, ec, ftvm := bed.topo, bed.etcd, bed.ftvm
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
			"--tap", PoolTAP(i), "--mac", PoolVMMAC(i), "--etcd-lease-ttl", poolDaemonTTL.String(),
			// A killed host's sockets close at once; the longer heartbeat
			// timeout only keeps six daemons, four hosts and three etcd
			// members on two cores from breaking a pair by themselves.
			"--heartbeat-timeout", "300ms")
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

	var killedAt []time.Time
	var allBack []time.Duration
	alive := append([]Host(nil), PoolHosts...)
	for round := 1; round <= poolKills; round++ {
		// Kill only a pool whose every VM is protected now: a pair that
		// lost its secondary on its own (a peer timeout on a starved
		// machine) would make this a double fault.
		p = await(fmt.Sprintf("round %d: every VM protected before the kill", round), 30*time.Second, allProtected)
		victim, held := poolVictim(p, alive, round)
		genBefore := map[string]uint64{}
		for _, id := range p.VMIDs() {
			if v := p.VMs[id]; v.Place != nil {
				genBefore[id] = v.Place.Gen
			}
		}
		alive = slices.DeleteFunc(alive, func(h Host) bool { return h == victim })
		at := time.Now()
		if err := hosts[victim].Kill(); err != nil {
			t.Fatal(err)
		}
		<-hosts[victim].Done()
		killedAt = append(killedAt, at)
		t.Logf("round %d: host %s SIGKILLed with its daemons at %s; it held %v", round, victim, at.Format("15:04:05.000"), held)

		protectedAt := map[string]time.Duration{}
		var unprotectedSeen []string
		p = await(fmt.Sprintf("round %d: every VM protected again on the hosts left", round), 60*time.Second, func(p *cluster.Pool) bool {
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
					protectedAt[id] = time.Since(at)
				}
			}
			return len(protectedAt) == PoolVMs
		})
		back := time.Since(at)
		allBack = append(allBack, back)
		checkPoolPlacements(t, p)
		status := clusterStatus()
		t.Logf("round %d: every VM protected again %v after the kill; ftvm cluster status:\n%s", round, back.Round(time.Millisecond), status)
		if !strings.Contains(status, "unprotected now: none") || strings.Contains(status, "\n"+string(victim)+" ") {
			t.Errorf("ftvm cluster status after re-protection lists unprotected VMs or the dead host:\n%s", status)
		}
		for _, h := range held {
			id, role, _ := strings.Cut(h, " ")
			// Placed anew: the placement's generation moved on. (Seeing it
			// unprotected is not required: on a loaded machine the first
			// status poll after the kill can come after the re-protection.)
			if pl := p.VMs[id].Place; pl == nil || pl.Gen <= genBefore[id] {
				t.Errorf("%s was on the dead host but its placement did not change after the kill (generation %d before, now %+v)", id, genBefore[id], pl)
			}
			if !contains(unprotectedSeen, id) {
				t.Logf("round %d: %s was re-protected before a status poll saw it unprotected", round, id)
			}
			t.Logf("round %d: %s, which the dead host held as %s, protected again %v after the kill (gen %d: primary %s, secondary %s)",
				round, id, strings.Trim(role, "()"), protectedAt[id].Round(time.Millisecond), p.VMs[id].Place.Gen, p.VMs[id].Place.Primary, p.VMs[id].Place.Secondary)
		}
		time.Sleep(time.Second) // load on the re-protected pairs
	}
	stopLoad()
	wg.Wait()
	for i := 0; i < PoolVMs; i++ {
		if loadErrs[i] != nil {
			t.Fatalf("load on vm%d: %v", i, loadErrs[i])
		}
		res := results[i]
		// Replies completed in each span: before the first kill, and from
		// each kill to the next (or the end).
		served := make([]int, len(killedAt)+1)
		firstAfter := make([]time.Duration, len(killedAt))
		for _, op := range res.History {
			if op.Outcome == linearize.Unknown {
				continue
			}
			at := res.Origin.Add(time.Duration(op.Complete))
			k := 0
			for k < len(killedAt) && !at.Before(killedAt[k]) {
				k++
			}
			served[k]++
			if k > 0 && served[k] == 1 {
				firstAfter[k-1] = at.Sub(killedAt[k-1])
			}
		}
		for k := range killedAt {
			if served[k+1] == 0 {
				t.Errorf("vm%d: no request served between kill %d and the next", i, k+1)
			}
		}
		if err := linearize.Check(res.History); err != nil {
			t.Errorf("vm%d: the client's history is not linearizable: %v", i, err)
		}
		var firsts []string
		for _, d := range firstAfter {
			firsts = append(firsts, d.Round(time.Millisecond).String())
		}
		t.Logf("vm%d: %d requests sent, %d served (%v in each span between kills), linearizable; first reply after each kill: %s",
			i, res.Stats.Sent, res.Stats.Served, served, strings.Join(firsts, ", "))
	}
	var backs []string
	for _, d := range allBack {
		backs = append(backs, d.Round(time.Millisecond).String())
	}
	t.Logf("times: set-up %v, from each kill to every VM protected again %s, whole test %v",
		setupDone.Sub(began).Round(time.Millisecond), strings.Join(backs, ", "), time.Since(began).Round(time.Millisecond))
}

// poolVictim picks the host to kill in a round among the live ones: in
// the first, the host with the most primaries (a host death with
// take-overs); in the later ones a host that holds only secondaries if
// there is one (replacements with no take-over), else the one with the
// most daemons. It returns what the host holds, "VM (role)" each.
func poolVictim(p *cluster.Pool, alive []Host, round int) (Host, []string) {
	held := map[Host][]string{}
	primaries := map[Host]int{}
	for _, id := range p.VMIDs() {
		v := p.VMs[id]
		held[Host(v.Place.Primary)] = append(held[Host(v.Place.Primary)], id+" (primary)")
		primaries[Host(v.Place.Primary)]++
		held[Host(v.Place.Secondary)] = append(held[Host(v.Place.Secondary)], id+" (secondary)")
	}
	var victim Host
	better := func(h Host) bool {
		if victim == "" {
			return true
		}
		if round == 1 && primaries[h] != primaries[victim] {
			return primaries[h] > primaries[victim]
		}
		if round > 1 && (primaries[h] == 0) != (primaries[victim] == 0) {
			return primaries[h] == 0
		}
		return len(held[h]) > len(held[victim])
	}
	for _, h := range alive {
		if len(held[h]) > 0 && better(h) {
			victim = h
		}
	}
	return victim, held[victim]
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
