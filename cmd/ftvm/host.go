package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/ftvm/ftvm/cluster"
)

func init() {
	commands.add(&command{
		name:    "host",
		summary: "run this machine as a host of a pool: register in etcd, place VMs when elected, run the daemons placed here",
		run:     runHost,
	})
}

const hostUsage = `usage: ftvm host --etcd-endpoints URLS --addr ADDR --tls-dir DIR [--name NAME] [--slots N] [--state-dir DIR]

Runs this machine as one host of a pool (ftvm cluster --help): it registers
in etcd under a lease with its address and slots, and for as long as it
runs:

  - it runs a daemon (ftvm primary or ftvm secondary, this binary) for each
    VM the pool places on it, and stops the daemon of a VM placed
    elsewhere. A secondary joins its primary by pre-copy; one that takes
    over goes on as the VM's primary. Each daemon gets the VM's flags
    (ftvm cluster add), and from this host: --vm-id, --listen ADDR:PORT,
    --peer and --peer-name (a secondary), --allow-peers (the pool's other
    hosts registered when it starts), --host-name and --tls-name NAME,
    --tls-dir or --psk-file, --arbiter etcd with this host's etcd flags,
    and under --state-dir: the VM's disk (VM.img), control socket
    (VM.sock), console (VM.console) and log (VM.log).
  - it publishes what each of its daemons says of itself (ftvm status), so
    that ftvm cluster status shows which VMs are protected.
  - one host of the pool, elected through etcd, places the VMs: a new VM
    on the two hosts with the most free slots; when a host dies (its lease
    ran out), each VM it ran a secondary of gets a new secondary, and each
    VM it ran the primary of gets one once the survivor has taken over.

The daemons run in this process's process group and die with it
(SIGKILL at its death): a host that dies takes its daemons along, as a
machine that dies would. SIGINT or SIGTERM stops the daemons (primaries
cleanly: their secondaries take over at once) and then the host.

Every host of a pool needs a certificate of the pool's CA under its --name
in --tls-dir (ftvm certs --hosts a,b,c,...), or the pool's --psk-file.

Exit codes: 0 stopped by SIGINT/SIGTERM, 1 failure (etcd lost for the
lease's TTL, say: restart it), 2 usage error.

flags:
`

// hostStopGrace is how long a daemon has to stop on SIGTERM before it is
// killed.
const hostStopGrace = 5 * time.Second

func runHost(e *env, args []string) int {
	fs := flag.NewFlagSet("ftvm host", flag.ContinueOnError)
	var ec etcdConfig
	checkEtcd := poolFlags(fs, &ec)
	hostname, _ := os.Hostname()
	name := fs.String("name", hostname, "this host's name in the pool, and its TLS name (its certificate NAME.pem in --tls-dir)")
	addr := fs.String("addr", "", "the address (IP or DNS name, no port) the pool's other hosts reach this one at; required")
	slots := fs.Int("slots", 4, "how many VMs (primaries and secondaries) this host takes at most")
	leaseTTL := fs.Duration("lease-ttl", 3*time.Second, "the lease this host's registration is under, whole seconds: a dead host leaves the pool after it")
	stateDir := fs.String("state-dir", "/var/lib/ftvm/host", "where each VM's disk, control socket, console and daemon log go (created if missing)")
	tlsDir := fs.String("tls-dir", "", "the daemons' --tls-dir: ca.pem and this host's NAME.pem, NAME-key.pem")
	pskFile := fs.String("psk-file", "", "instead of --tls-dir, the daemons' --psk-file")
	ftvmPath := fs.String("ftvm", "", "the ftvm binary to run the daemons with (default: this one)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), hostUsage)
		fs.PrintDefaults()
	}
	if done, code := parseFlags(e, fs, args); done {
		return code
	}
	usageErr := func(err error) int {
		fmt.Fprintf(e.stderr, "ftvm host: %v\n", err)
		return exitUsage
	}
	if err := checkEtcd(); err != nil {
		return usageErr(err)
	}
	if err := cluster.CheckName("--name", *name); err != nil {
		return usageErr(err)
	}
	if *addr == "" || strings.ContainsAny(*addr, " /") {
		return usageErr(fmt.Errorf("--addr %q: give the address (no port) other hosts reach this one at", *addr))
	}
	if _, _, err := net.SplitHostPort(*addr); err == nil {
		return usageErr(fmt.Errorf("--addr %q: give the address without a port (each VM has its own port: ftvm cluster add --port)", *addr))
	}
	if *slots < 1 {
		return usageErr(fmt.Errorf("--slots %d: give at least 1", *slots))
	}
	if *leaseTTL < time.Second || *leaseTTL%time.Second != 0 {
		return usageErr(fmt.Errorf("--lease-ttl %v: give whole seconds, at least 1s", *leaseTTL))
	}
	if (*tlsDir == "") == (*pskFile == "") {
		return usageErr(errors.New("give --tls-dir (the pool's certificates) or --psk-file (the pool's key), one of the two"))
	}
	level, err := parseLogLevel(*logLevel)
	if err != nil {
		return usageErr(err)
	}
	log := slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: level})).With("host", *name)
	if *ftvmPath == "" {
		if *ftvmPath, err = os.Executable(); err != nil {
			log.Error("finding this binary; give --ftvm", "err", err)
			return exitFailure
		}
	}
	if err := os.MkdirAll(*stateDir, 0o700); err != nil {
		log.Error("--state-dir", "err", err)
		return exitFailure
	}
	cli, err := etcdClient(ec)
	if err != nil {
		log.Error("connecting to etcd", "err", err)
		return exitFailure
	}
	defer cli.Close()
	// The grant is bounded by ctx; the session's keep-alive and its
	// Close are not, so that a host stopped by a signal still revokes
	// its lease and leaves the pool at once.
	newSession := func(ctx context.Context) (*concurrency.Session, error) {
		g, err := cli.Grant(ctx, int64(*leaseTTL/time.Second))
		if err != nil {
			return nil, err
		}
		return concurrency.NewSession(cli, concurrency.WithLease(g.ID))
	}
	sess, err := newSession(context.Background())
	if err != nil {
		log.Error("taking this host's lease in etcd", "err", err)
		return exitFailure
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	r := &execRunner{ftvm: *ftvmPath, name: *name, stateDir: *stateDir, tlsDir: *tlsDir, pskFile: *pskFile, etcd: ec, log: log}
	h := &cluster.Host{Client: cli, Keys: cluster.Keys{Prefix: ec.prefix}, Name: *name,
		Info: cluster.HostInfo{Addr: *addr, Slots: *slots}, Session: sess, NewSession: newSession, Runner: r, Log: log}
	defer func() { h.Session.Close() }() // the newest lease, revoked: the host leaves the pool at once
	if err := h.Run(ctx); err != nil {
		log.Error("host stopped", "err", err)
		return exitFailure
	}
	log.Info("host stopped; its daemons are stopped")
	return exitOK
}

// execRunner runs daemons as processes of this binary.
type execRunner struct {
	ftvm, name, stateDir, tlsDir, pskFile string
	etcd                                  etcdConfig
	log                                   *slog.Logger
}

func (r *execRunner) args(l cluster.Launch) []string {
	base := filepath.Join(r.stateDir, l.VM)
	args := []string{l.Role}
	args = append(args, l.Spec.Args...)
	args = append(args,
		"--vm-id", l.VM,
		"--listen", l.Listen,
		"--host-name", r.name,
		"--tls-name", r.name,
		"--disk", base+".img",
		"--control", base+".sock",
		"--console", base+".console",
		"--arbiter", "etcd",
		"--etcd-endpoints", strings.Join(r.etcd.endpoints, ","),
		"--etcd-prefix", r.etcd.prefix,
	)
	if len(l.AllowPeers) > 0 {
		args = append(args, "--allow-peers", strings.Join(l.AllowPeers, ","))
	}
	if r.tlsDir != "" {
		args = append(args, "--tls-dir", r.tlsDir)
	} else {
		args = append(args, "--psk-file", r.pskFile)
	}
	for flag, v := range map[string]string{"--etcd-cacert": r.etcd.caFile, "--etcd-cert": r.etcd.certFile, "--etcd-key": r.etcd.keyFile} {
		if v != "" {
			args = append(args, flag, v)
		}
	}
	if l.Role == "secondary" {
		args = append(args, "--peer", l.PeerAddr, "--peer-name", l.Peer)
	}
	return args
}

func (r *execRunner) Start(l cluster.Launch) (cluster.Daemon, error) {
	logPath := filepath.Join(r.stateDir, l.VM+".log")
	out, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("the daemon's log: %w", err)
	}
	defer out.Close()
	args := r.args(l)
	fmt.Fprintf(out, "--- %s: ftvm %s\n", time.Now().UTC().Format(time.RFC3339Nano), strings.Join(args, " "))
	cmd := exec.Command(r.ftvm, args...)
	cmd.Stdout, cmd.Stderr = out, out
	// The daemon dies with the host process, as on a machine that dies:
	// the pool has already counted it gone.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s %s: %w", r.ftvm, l.Role, err)
	}
	d := &execDaemon{cmd: cmd, control: filepath.Join(r.stateDir, l.VM+".sock"), done: make(chan struct{})}
	go func() {
		d.err = cmd.Wait()
		close(d.done)
	}()
	return d, nil
}

type execDaemon struct {
	cmd     *exec.Cmd
	control string
	done    chan struct{}
	err     error // set before done is closed
	once    sync.Once
}

func (d *execDaemon) Done() <-chan struct{} { return d.done }

func (d *execDaemon) Err() error {
	if d.err == nil {
		return nil
	}
	return fmt.Errorf("pid %d: %w", d.cmd.Process.Pid, d.err)
}

func (d *execDaemon) Stop() {
	d.once.Do(func() {
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.done:
		case <-time.After(hostStopGrace):
			_ = d.cmd.Process.Kill()
			<-d.done
		}
	})
	<-d.done
}

func (d *execDaemon) State(ctx context.Context) (cluster.DaemonState, error) {
	s, err := queryStatus(ctx, d.control)
	if err != nil {
		return cluster.DaemonState{}, err
	}
	return cluster.DaemonState{Role: s.Role, Protected: s.Protected, Synced: s.Synced, Epoch: s.Epoch, PID: s.PID}, nil
}
