package main

import (
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/lockstep/wire"
)

// --allow-peers names who may join; a secondary (which accepts the next
// secondary once it goes live) defaults to its --peer-name, the host most
// likely to rejoin, and under PSK only when that name was given.
func TestAllowPeersFlag(t *testing.T) {
	for _, tc := range []struct {
		role wire.Role
		args []string
		want []string
	}{
		{wire.RolePrimary, []string{"--tls-dir", "d", "--allow-peers", "b, c"}, []string{"b", "c"}},
		{wire.RolePrimary, []string{"--tls-dir", "d"}, nil},
		{wire.RoleSecondary, []string{"--tls-dir", "d", "--peer", "10.0.0.1:7070", "--peer-name", "a"}, []string{"a"}},
		{wire.RoleSecondary, []string{"--tls-dir", "d", "--peer", "10.0.0.1:7070"}, []string{"10.0.0.1"}},
		{wire.RoleSecondary, []string{"--psk-file", "k", "--peer", "10.0.0.1:7070"}, nil},
		{wire.RoleSecondary, []string{"--psk-file", "k", "--peer", "10.0.0.1:7070", "--peer-name", "a", "--allow-peers", "c"}, []string{"c"}},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		finish := daemonFlags(fs, tc.role)
		if err := fs.Parse(append([]string{"--arbiter-dir", t.TempDir(), "--tls-name", "me"}, tc.args...)); err != nil {
			t.Fatal(err)
		}
		c, err := finish()
		if err != nil {
			t.Fatalf("%s %q: %v", tc.role, tc.args, err)
		}
		if !slices.Equal(c.allowPeers, tc.want) {
			t.Errorf("%s %q: allowed peers %q, want %q", tc.role, tc.args, c.allowPeers, tc.want)
		}
	}
}

// TestHeartbeatTimeoutFlag: --heartbeat-timeout reaches the transport's
// configuration and the peer timeout, and one shorter than two heartbeat
// intervals is refused.
func TestHeartbeatTimeoutFlag(t *testing.T) {
	parse := func(args ...string) (*daemonConfig, error) {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		finish := daemonFlags(fs, wire.RolePrimary)
		if err := fs.Parse(append([]string{"--arbiter-dir", t.TempDir(), "--tls-name", "me", "--psk-file", "k"}, args...)); err != nil {
			t.Fatal(err)
		}
		return finish()
	}
	c, err := parse()
	if err != nil {
		t.Fatal(err)
	}
	if c.heartbeatTimeout != defaultDaemonHeartbeatTimeout {
		t.Errorf("default --heartbeat-timeout %v, want %v", c.heartbeatTimeout, defaultDaemonHeartbeatTimeout)
	}
	c, err = parse("--heartbeat-timeout", "300ms", "--peer-timeout-ticks", "40")
	if err != nil {
		t.Fatal(err)
	}
	c.pskFile = filepath.Join(t.TempDir(), "psk")
	if err := os.WriteFile(c.pskFile, []byte("0123456789abcdef0123456789abcdef"), 0o600); err != nil {
		t.Fatal(err)
	}
	tr, err := (&daemon{cfg: c}).transportConfig()
	if err != nil {
		t.Fatal(err)
	}
	if tr.HeartbeatTimeout != c.joinHeartbeatTimeout {
		t.Errorf("a transport starts with heartbeat timeout %v, want the join's %v", tr.HeartbeatTimeout, c.joinHeartbeatTimeout)
	}
	if got := c.peerTimeout(tr); got != 300*time.Millisecond {
		t.Errorf("peer timeout %v with --heartbeat-timeout 300ms and 40 ticks of 10ms, want 300ms", got)
	}
	if _, err := parse("--heartbeat-timeout", "3ms"); err == nil || !strings.Contains(err.Error(), "--heartbeat-timeout") {
		t.Errorf("--heartbeat-timeout 3ms (heartbeats every 2ms): err %v, want a refusal naming the flag", err)
	}
	if _, err := parse("--heartbeat-timeout", "400ms", "--join-heartbeat-timeout", "1s", "--peer-timeout-ticks", "30"); err == nil || !strings.Contains(err.Error(), "--peer-timeout-ticks") {
		t.Errorf("--heartbeat-timeout 400ms past a 300ms progress check: err %v, want a refusal naming --peer-timeout-ticks", err)
	}
	if _, err := parse("--heartbeat-timeout", "100ms", "--join-heartbeat-timeout", "50ms"); err == nil || !strings.Contains(err.Error(), "--join-heartbeat-timeout") {
		t.Errorf("--join-heartbeat-timeout under --heartbeat-timeout: err %v, want a refusal naming it", err)
	}
	c, err = parse("--heartbeat-interval", "5ms", "--heartbeat-timeout", "30ms")
	if err != nil {
		t.Fatal(err)
	}
	c.pskFile = filepath.Join(t.TempDir(), "psk")
	if err := os.WriteFile(c.pskFile, []byte("0123456789abcdef0123456789abcdef"), 0o600); err != nil {
		t.Fatal(err)
	}
	if tr, err = (&daemon{cfg: c}).transportConfig(); err != nil || tr.HeartbeatInterval != 5*time.Millisecond {
		t.Errorf("--heartbeat-interval 5ms: the transport's interval is %v (%v)", tr.HeartbeatInterval, err)
	}
}
