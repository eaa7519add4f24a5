package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/lockstep"
	etcdarb "github.com/ftvm/ftvm/lockstep/arbiter/etcd"
	"github.com/ftvm/ftvm/lockstep/arbiter/etcd/etcdtest"
)

func TestDaemonArbiterUsageErrors(t *testing.T) {
	dir := t.TempDir()
	psk := filepath.Join(dir, "psk")
	os.WriteFile(psk, bytes.Repeat([]byte("k"), 32), 0o600)
	base := []string{"primary", "--psk-file", psk}
	ep := "--etcd-endpoints=http://127.0.0.1:2379"
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--arbiter", "zookeeper"}, `--arbiter "zookeeper": want file or etcd`},
		{[]string{"--arbiter", "etcd"}, "--etcd-endpoints is required"},
		{[]string{"--arbiter", "etcd", ep, "--arbiter-dir", dir}, "--arbiter-dir is for --arbiter file"},
		{[]string{"--arbiter-dir", dir, ep}, "--etcd-endpoints is for --arbiter etcd"},
		{[]string{"--arbiter", "etcd", ep, "--etcd-cert", "c.pem"}, "--etcd-cert and --etcd-key go together"},
		{[]string{"--arbiter", "etcd", ep, "--etcd-lease-ttl", "1500ms"}, "whole seconds"},
		{[]string{"--arbiter", "etcd", ep, "--etcd-lease-ttl", "0s"}, "whole seconds"},
	} {
		args := append(append([]string(nil), base...), c.args...)
		code, _, errs := runFtvm(args...)
		if code != exitUsage || !strings.Contains(errs, c.want) {
			t.Errorf("ftvm %q: exit %d, stderr %q; want exit %d naming %q", args, code, errs, exitUsage, c.want)
		}
	}
}

// An etcd that does not answer is named, with what to check.
func TestEtcdClientFailsClearly(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	_, err = etcdClient(etcdConfig{endpoints: []string{"http://" + addr}, prefix: "/ftvm/", dialTimeout: 300 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), addr) || !strings.Contains(err.Error(), "quorum") {
		t.Fatalf("etcdClient to a dead endpoint: %v; want an error naming %s and what to check", err, addr)
	}
	_, err = etcdClient(etcdConfig{endpoints: []string{"https://" + addr}, caFile: filepath.Join(t.TempDir(), "none.pem"), prefix: "/ftvm/", dialTimeout: time.Second})
	if err == nil || !strings.Contains(err.Error(), "--etcd-cacert") {
		t.Fatalf("a missing CA file: %v; want an error naming --etcd-cacert", err)
	}
}

func TestReleaseSpansPerEpoch(t *testing.T) {
	var s releaseSpans
	for _, e := range []uint64{3, 3, 3, 5, 5} {
		s.note(lockstep.Output{Epoch: e, Fence: 100 + e})
	}
	got := s.all()
	if len(got) != 2 || got[0].Epoch != 3 || got[0].Count != 3 || got[0].Fence != 103 || got[1].Epoch != 5 || got[1].Count != 2 {
		t.Fatalf("spans %+v; want epoch 3 with 3 releases, then epoch 5 with 2", got)
	}
	for _, sp := range got {
		first, err1 := time.Parse(time.RFC3339Nano, sp.First)
		last, err2 := time.Parse(time.RFC3339Nano, sp.Last)
		if err1 != nil || err2 != nil || last.Before(first) {
			t.Fatalf("span %+v: times do not parse or run backwards", sp)
		}
	}
	last3, _ := time.Parse(time.RFC3339Nano, got[0].Last)
	first5, _ := time.Parse(time.RFC3339Nano, got[1].First)
	if first5.Before(last3) {
		t.Fatalf("epoch 3's last release %s after epoch 5's first %s", got[0].Last, got[1].First)
	}
}

func TestStatusShowsTheLease(t *testing.T) {
	var b strings.Builder
	r := &statusReport{VMID: "vm", Role: "primary", Arbiter: arbiterReport{Kind: "etcd", Where: "http://e1:2379", LeaseID: "1a2b", LeaseTTL: 5, LeaseLeft: 3.25, LeaseHeld: true}}
	printStatus(&b, r)
	if !strings.Contains(b.String(), "arbiter: etcd at http://e1:2379; lease 1a2b, TTL 5 s, 3.2 s left") {
		t.Fatalf("status with a held lease:\n%s", b.String())
	}
	b.Reset()
	r.Arbiter.LeaseLostAt = "no keep-alive was answered"
	printStatus(&b, r)
	if !strings.Contains(b.String(), "lease 1a2b LOST: no keep-alive was answered") {
		t.Fatalf("status with a lost lease:\n%s", b.String())
	}
	b.Reset()
	r.Arbiter = arbiterReport{Kind: "file", Where: "/shared/ftvm"}
	printStatus(&b, r)
	if !strings.Contains(b.String(), "arbiter: file in /shared/ftvm") {
		t.Fatalf("status with the file arbiter:\n%s", b.String())
	}
}

// ftvm arbiter status and reset read and release the record in a real
// etcd, and reset refuses while a daemon of the VM runs.
func TestArbiterCommandOnEtcd(t *testing.T) {
	m := etcdtest.Start(t)
	ep := "--etcd-endpoints=" + m.URL
	code, out, errs := runFtvm("arbiter", "status", "--arbiter", "etcd", ep, "--vm-id", "vm")
	if code != exitOK || !strings.Contains(out, "no epoch granted yet") {
		t.Fatalf("status of a fresh VM: exit %d, %q %q", code, out, errs)
	}
	cli, err := etcdClient(etcdConfig{endpoints: []string{m.URL}, prefix: etcdarb.DefaultPrefix, dialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	a, err := etcdarb.New(etcdarb.Config{Client: cli, Holder: "a", LeaseTTL: etcdtest.MinTTL})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ok, fence, err := a.Acquire(context.Background(), "vm", 1)
	if !ok || err != nil {
		t.Fatal(ok, err)
	}
	run, err := a.Running("vm")
	if err != nil {
		t.Fatal(err)
	}
	code, out, _ = runFtvm("arbiter", "status", "--arbiter", "etcd", ep, "--vm-id", "vm")
	if want := fmt.Sprintf("epoch 1, fence %d, holder a, not released", fence); code != exitOK || !strings.Contains(out, want) || !strings.Contains(out, "a daemon of this VM is running") {
		t.Fatalf("status while a runs: exit %d, %q; want %q and a running daemon", code, out, want)
	}
	if code, _, errs := runFtvm("arbiter", "reset", "--arbiter", "etcd", ep, "--vm-id", "vm"); code != exitFailure || !strings.Contains(errs, "refused") {
		t.Fatalf("reset while a daemon runs: exit %d, %q", code, errs)
	}
	run.Close()
	if code, out, errs := runFtvm("arbiter", "reset", "--arbiter", "etcd", ep, "--vm-id", "vm"); code != exitOK || !strings.Contains(out, "takes epoch 2") {
		t.Fatalf("reset once it stopped: exit %d, %q %q", code, out, errs)
	}
	if st, err := a.State(context.Background(), "vm"); err != nil || !st.Released || st.Holder != "" {
		t.Fatalf("state after the reset: %+v %v", st, err)
	}
}
