// Package etcdtest runs a real etcd server in the test's process (etcd's
// embed package) on loopback, for the tests of the etcd arbiter and of the
// commands that use it.
//
//	m := etcdtest.Start(t)
//	cli, _ := clientv3.New(clientv3.Config{Endpoints: []string{m.URL}})
package etcdtest

import (
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// Timing: a 50 ms heartbeat and a 500 ms election timeout, so that etcd
// grants leases as short as MinTTL.
const (
	heartbeatMs  = 50
	electionMs   = 500
	readyTimeout = 20 * time.Second
	// MinTTL is the shortest lease the member grants.
	MinTTL = time.Second
)

// Member is one running etcd server.
type Member struct {
	URL  string // its client URL
	e    *embed.Etcd
	once sync.Once
}

// Start starts a one-member cluster, stopped when the test ends.
func Start(t testing.TB) *Member {
	t.Helper()
	cfg := embed.NewConfig()
	cfg.Dir = t.TempDir()
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{filepath.Join(cfg.Dir, "etcd.log")}
	cfg.TickMs, cfg.ElectionMs = heartbeatMs, electionMs
	cu, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", freePort(t)))
	pu, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", freePort(t)))
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(readyTimeout):
		e.Close()
		t.Fatal("embedded etcd did not become ready")
	}
	m := &Member{e: e, URL: cu.String()}
	t.Cleanup(m.Stop)
	return m
}

// Stop stops the member (once; later calls do nothing).
func (m *Member) Stop() { m.once.Do(m.e.Close) }

// freePort is a loopback port nothing listens on now (etcd's embed needs
// the port itself, for the peer URL it advertises).
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
