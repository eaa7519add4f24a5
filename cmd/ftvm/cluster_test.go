package main

import (
	"strings"
	"testing"

	"github.com/ftvm/ftvm/lockstep/arbiter/etcd/etcdtest"
)

func TestClusterAndHostUsage(t *testing.T) {
	ep := "http://127.0.0.1:1"
	for _, c := range []struct {
		args     []string
		code     int
		inStderr string
	}{
		{[]string{"cluster"}, exitUsage, "usage: ftvm cluster status"},
		{[]string{"cluster", "status"}, exitUsage, "--etcd-endpoints is required"},
		{[]string{"cluster", "nosuch", "--etcd-endpoints", ep}, exitUsage, `unknown command "nosuch"`},
		{[]string{"cluster", "add", "--etcd-endpoints", ep, "--vm-id", "v1", "--port", "7001"}, exitUsage, "daemon flags after --"},
		{[]string{"cluster", "add", "--etcd-endpoints", ep, "--vm-id", "v1", "--port", "0", "--", "--guest", "g"}, exitUsage, "--port 0"},
		{[]string{"cluster", "add", "--etcd-endpoints", ep, "--vm-id", "-x", "--port", "1", "--", "--guest", "g"}, exitUsage, "is not valid"},
		{[]string{"cluster", "add", "--etcd-endpoints", ep, "--vm-id", "v1", "--port", "7001", "--", "--peer", "x"}, exitUsage, "set by each host"},
		{[]string{"cluster", "add", "--etcd-endpoints", ep, "--vm-id", "v1", "--port", "7001", "--", "--nosuch"}, exitUsage, "nosuch"},
		{[]string{"host", "--etcd-endpoints", ep}, exitUsage, "--addr"},
		{[]string{"host", "--etcd-endpoints", ep, "--addr", "10.0.0.1:7070", "--tls-dir", "x"}, exitUsage, "without a port"},
		{[]string{"host", "--etcd-endpoints", ep, "--addr", "10.0.0.1"}, exitUsage, "--tls-dir"},
		{[]string{"host", "--etcd-endpoints", ep, "--addr", "10.0.0.1", "--tls-dir", "x", "--lease-ttl", "1500ms"}, exitUsage, "whole seconds"},
	} {
		code, out, errs := runFtvm(c.args...)
		if code != c.code || !strings.Contains(errs, c.inStderr) {
			t.Errorf("ftvm %q: exit %d, stdout %q, stderr %q; want exit %d with %q on stderr", c.args, code, out, errs, c.code, c.inStderr)
		}
	}
}

func TestClusterAddStatusRemove(t *testing.T) {
	m := etcdtest.Start(t)
	ep := []string{"--etcd-endpoints", m.URL, "--etcd-prefix", "/cmdtest/"}
	add := append(append([]string{"cluster", "add"}, ep...), "--vm-id", "v1", "--port", "7001", "--", "--guest", "vmm/guests/build/kvstore", "--tap", "tap1")
	if code, out, errs := runFtvm(add...); code != exitOK || !strings.Contains(out, "VM v1 added") {
		t.Fatalf("cluster add: exit %d, %q %q", code, out, errs)
	}
	if code, _, errs := runFtvm(add...); code != exitFailure || !strings.Contains(errs, "already in the pool") {
		t.Errorf("a second cluster add of v1: exit %d, stderr %q; want 1 and 'already in the pool'", code, errs)
	}
	code, out, errs := runFtvm(append([]string{"cluster", "status"}, ep...)...)
	if code != exitOK || !strings.Contains(out, "v1") || !strings.Contains(out, "not placed") || !strings.Contains(out, "unprotected now: v1") {
		t.Errorf("cluster status with no host: exit %d, stdout:\n%s\nstderr %q", code, out, errs)
	}
	code, out, _ = runFtvm(append([]string{"cluster", "status", "--json"}, ep...)...)
	if code != exitOK || !strings.Contains(out, `"unprotected": [`) {
		t.Errorf("cluster status --json: exit %d, %s", code, out)
	}
	rm := append(append([]string{"cluster", "remove"}, ep...), "--vm-id", "v1")
	if code, out, errs := runFtvm(rm...); code != exitOK || !strings.Contains(out, "removed") {
		t.Errorf("cluster remove: exit %d, %q %q", code, out, errs)
	}
	if code, _, errs := runFtvm(rm...); code != exitFailure || !strings.Contains(errs, "not in the pool") {
		t.Errorf("a second cluster remove: exit %d, %q", code, errs)
	}
}
