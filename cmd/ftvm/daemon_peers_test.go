package main

import (
	"flag"
	"slices"
	"testing"

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
