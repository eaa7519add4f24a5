package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/ftvm/ftvm/agent"
	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/lockstep/arbiter"
	etcdarb "github.com/ftvm/ftvm/lockstep/arbiter/etcd"
)

// daemonArbiter is what the daemon uses of its arbiter, whichever kind
// (--arbiter): arbiter.File or lockstep/arbiter/etcd's Arbiter.
type daemonArbiter interface {
	agent.Arbiter
	State(ctx context.Context, vmID string) (arbiter.State, error)
	Release(ctx context.Context, vmID string, epoch, fence uint64) (bool, error)
	Running(vmID string) (io.Closer, error)
}

var (
	_ daemonArbiter = (*arbiter.File)(nil)
	_ daemonArbiter = (*etcdarb.Arbiter)(nil)
)

// Arbiter kinds (--arbiter).
const (
	arbiterKindFile = "file"
	arbiterKindEtcd = "etcd"
)

// etcdConfig is how the daemon reaches etcd (--arbiter etcd).
type etcdConfig struct {
	endpoints   []string
	caFile      string // --etcd-cacert: verify etcd's servers (TLS)
	certFile    string // --etcd-cert, --etcd-key: this host's client certificate
	keyFile     string
	prefix      string
	leaseTTL    time.Duration
	dialTimeout time.Duration
}

const defaultEtcdDialTimeout = 5 * time.Second

// arbiterFlags declares the flags that choose and reach the arbiter; the
// returned function checks them once parsed.
func arbiterFlags(fs *flag.FlagSet, c *daemonConfig) func() error {
	fs.StringVar(&c.arbiterKind, "arbiter", arbiterKindFile, "the split-brain lock: file (a state file in --arbiter-dir, on storage every host shares) or etcd (an etcd cluster at --etcd-endpoints, under a lease)")
	endpoints := fs.String("etcd-endpoints", "", "with --arbiter etcd: the etcd members' client URLs, comma-separated (http://host:2379, or https:// with --etcd-cacert); required")
	e := &c.etcd
	fs.StringVar(&e.caFile, "etcd-cacert", "", "with --arbiter etcd: CA bundle (PEM) that signed the etcd servers' certificates: the client speaks TLS")
	fs.StringVar(&e.certFile, "etcd-cert", "", "with --arbiter etcd: this host's client certificate (PEM), for an etcd that checks client certificates; needs --etcd-key")
	fs.StringVar(&e.keyFile, "etcd-key", "", "with --arbiter etcd: the key of --etcd-cert (PEM)")
	fs.StringVar(&e.prefix, "etcd-prefix", etcdarb.DefaultPrefix, "with --arbiter etcd: the prefix of ftvm's keys (layout in lockstep/arbiter/etcd)")
	fs.DurationVar(&e.leaseTTL, "etcd-lease-ttl", etcdarb.DefaultLeaseTTL, "with --arbiter etcd: the lease a primary holds its epoch under, whole seconds: a primary cut off from etcd stops releasing within it, and a dead primary is replaced no sooner")
	fs.DurationVar(&e.dialTimeout, "etcd-dial-timeout", defaultEtcdDialTimeout, "with --arbiter etcd: how long to wait for etcd at start")
	return func() error {
		switch c.arbiterKind {
		case arbiterKindFile:
			if c.arbiterDir == "" {
				return errors.New("--arbiter-dir is required with --arbiter file: a directory every host of this VM shares (the split-brain lock lives there)")
			}
			if *endpoints != "" {
				return errors.New("--etcd-endpoints is for --arbiter etcd; with --arbiter file the lock is in --arbiter-dir")
			}
			return nil
		case arbiterKindEtcd:
		default:
			return fmt.Errorf("--arbiter %q: want file or etcd", c.arbiterKind)
		}
		if c.arbiterDir != "" {
			return errors.New("--arbiter-dir is for --arbiter file; with --arbiter etcd the lock is in etcd")
		}
		for _, ep := range strings.Split(*endpoints, ",") {
			if ep = strings.TrimSpace(ep); ep != "" {
				e.endpoints = append(e.endpoints, ep)
			}
		}
		if len(e.endpoints) == 0 {
			return errors.New("--etcd-endpoints is required with --arbiter etcd: the client URLs of the etcd members, comma-separated")
		}
		if (e.certFile == "") != (e.keyFile == "") {
			return errors.New("--etcd-cert and --etcd-key go together: give both, or neither")
		}
		if e.leaseTTL < etcdarb.MinLeaseTTL || e.leaseTTL%time.Second != 0 {
			return fmt.Errorf("--etcd-lease-ttl %v: give whole seconds, at least %v", e.leaseTTL, etcdarb.MinLeaseTTL)
		}
		if e.dialTimeout <= 0 {
			return fmt.Errorf("--etcd-dial-timeout %v must be positive", e.dialTimeout)
		}
		return nil
	}
}

// etcdClient connects to the etcd cluster and checks that it answers.
func etcdClient(e etcdConfig) (*clientv3.Client, error) {
	var tlsCfg *tls.Config
	if e.caFile != "" || e.certFile != "" {
		info := transport.TLSInfo{TrustedCAFile: e.caFile, CertFile: e.certFile, KeyFile: e.keyFile}
		var err error
		if tlsCfg, err = info.ClientConfig(); err != nil {
			return nil, fmt.Errorf("etcd client TLS (--etcd-cacert, --etcd-cert, --etcd-key): %w", err)
		}
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: e.endpoints, TLS: tlsCfg, DialTimeout: e.dialTimeout,
		// The client's own log (zap) says little a user acts on; the
		// arbiter logs what matters through the daemon's logger.
		Logger: zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("--etcd-endpoints %s: %w", strings.Join(e.endpoints, ","), err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), e.dialTimeout)
	defer cancel()
	if _, err := cli.Get(ctx, e.prefix+"ping", clientv3.WithCountOnly()); err != nil {
		cli.Close()
		return nil, fmt.Errorf("etcd at %s does not answer within %v: %w (check --etcd-endpoints, that a quorum of members runs, and the TLS flags)", strings.Join(e.endpoints, ","), e.dialTimeout, err)
	}
	return cli, nil
}

// openArbiter makes the arbiter --arbiter names; for etcd it also returns
// the lease the agent releases under, and what to close at the end.
func (d *daemon) openArbiter() (daemonArbiter, agent.Lease, []io.Closer, error) {
	c := d.cfg
	if c.arbiterKind != arbiterKindEtcd {
		if err := os.MkdirAll(c.arbiterDir, 0o700); err != nil {
			return nil, nil, nil, fmt.Errorf("arbiter directory: %w", err)
		}
		f, err := arbiter.NewFile(c.arbiterDir)
		if err != nil {
			return nil, nil, nil, err
		}
		f.Holder = c.hostName
		return f, nil, nil, nil
	}
	cli, err := etcdClient(c.etcd)
	if err != nil {
		return nil, nil, nil, err
	}
	a, err := etcdarb.New(etcdarb.Config{Client: cli, Prefix: c.etcd.prefix, Holder: c.hostName, LeaseTTL: c.etcd.leaseTTL, Logger: d.log})
	if err != nil {
		cli.Close()
		return nil, nil, nil, err
	}
	d.etcdArb = a
	return a, a, []io.Closer{cli, a}, nil
}

// arbiterWhere names the arbiter in messages: its directory or endpoints.
func (c *daemonConfig) arbiterWhere() string {
	if c.arbiterKind == arbiterKindEtcd {
		return "--etcd-endpoints " + strings.Join(c.etcd.endpoints, ",")
	}
	return "--arbiter-dir " + c.arbiterDir
}

// arbiterReport is the arbiter's part of ftvm status.
type arbiterReport struct {
	Kind string `json:"kind"` // file or etcd
	// Where: the directory, or the etcd endpoints.
	Where string `json:"where"`
	// The etcd lease this host holds its epoch under (etcd only).
	LeaseID     string  `json:"lease_id,omitempty"`
	LeaseTTL    float64 `json:"lease_ttl_s,omitempty"`
	LeaseLeft   float64 `json:"lease_left_s,omitempty"`
	LeaseHeld   bool    `json:"lease_held,omitempty"`
	LeaseLostAt string  `json:"lease_lost,omitempty"` // why it was lost
}

func (d *daemon) arbiterReport() arbiterReport {
	r := arbiterReport{Kind: d.cfg.arbiterKind, Where: d.cfg.arbiterDir}
	if d.etcdArb == nil {
		return r
	}
	r.Where = strings.Join(d.cfg.etcd.endpoints, ",")
	ls := d.etcdArb.Lease()
	if ls.ID != 0 {
		r.LeaseID = fmt.Sprintf("%x", ls.ID)
	}
	r.LeaseTTL, r.LeaseLeft, r.LeaseHeld, r.LeaseLostAt = ls.TTL.Seconds(), ls.Left.Seconds(), ls.Holding, ls.Lost
	return r
}

// releaseSpans keeps, for each epoch this host released outputs in, when
// its first and its last release were (agent.Config.OnRelease), so that a
// test can show that no two hosts released in one epoch, nor at
// overlapping times. The spans are in ftvm status, and logged at the end.
// note is on the release path: past an epoch's first release it touches
// only atomics. It sees an output as the node releases it, a moment
// before the disk writer performs it (or refuses it, the lease lost), so
// a span's last release is never earlier than the last one performed.
type releaseSpans struct {
	epoch atomic.Uint64 // of the newest span
	last  atomic.Int64  // unix ns of the newest release
	count atomic.Uint64 // releases in the newest span
	mu    sync.Mutex
	spans []releaseSpan // mu held; the newest one's Last and Count are in last and count
}

type releaseSpan struct {
	Epoch uint64 `json:"epoch"`
	Fence uint64 `json:"fence"`
	First string `json:"first"`
	Last  string `json:"last"`
	Count uint64 `json:"count"`
}

func (s *releaseSpans) note(o lockstep.Output) {
	t := time.Now().UnixNano()
	if o.Epoch != s.epoch.Load() {
		s.mu.Lock()
		if o.Epoch != s.epoch.Load() {
			s.closeNewest()
			s.spans = append(s.spans, releaseSpan{Epoch: o.Epoch, Fence: o.Fence, First: stamp(t)})
			s.count.Store(0)
			s.epoch.Store(o.Epoch)
		}
		s.mu.Unlock()
	}
	s.last.Store(t)
	s.count.Add(1)
}

// closeNewest writes the newest span's last release and count. mu held.
func (s *releaseSpans) closeNewest() {
	if n := len(s.spans); n > 0 {
		s.spans[n-1].Last = stamp(s.last.Load())
		s.spans[n-1].Count = s.count.Load()
	}
}

// all returns a copy of every span, the newest as of now.
func (s *releaseSpans) all() []releaseSpan {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closeNewest()
	return append([]releaseSpan(nil), s.spans...)
}

func (s *releaseSpans) log(l *slog.Logger) {
	for _, sp := range s.all() {
		l.Info("released outputs", "epoch", sp.Epoch, "fence", sp.Fence, "first_release", sp.First, "last_release", sp.Last, "outputs", sp.Count)
	}
}

func stamp(ns int64) string { return time.Unix(0, ns).UTC().Format(time.RFC3339Nano) }
