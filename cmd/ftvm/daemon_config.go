package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ftvm/ftvm/lockstep"
	"github.com/ftvm/ftvm/lockstep/wire"
	"github.com/ftvm/ftvm/tcpfallback"
	"github.com/ftvm/ftvm/vmm"
)

// Exit codes of ftvm primary and ftvm secondary beyond the common ones.
const (
	// exitHalted: this host stopped because another host is primary for
	// the VM (it lost the arbiter, or met a newer epoch). Do not restart
	// it as primary; restart it as a secondary to re-protect the VM.
	exitHalted = 3
)

// daemonConfig is everything ftvm primary and ftvm secondary are told, by
// flags or the config file.
type daemonConfig struct {
	role wire.Role

	vmID     string
	guest    string
	cmdline  string
	memBytes uint64
	console  string

	disk          string
	diskBytes     uint64
	sharedStorage bool

	tap    string
	udpNIC string
	mac    [6]byte
	vmIP   netip.Addr

	listen   string
	peer     string
	peerName string
	// peerNameGiven: --peer-name was given, not derived from --peer.
	peerNameGiven bool
	// peerNameFromAddr: --peer-name was not given and --peer is an IP
	// address, which the primary's certificate must then carry.
	peerNameFromAddr bool
	// allowPeers are the names of the hosts that may join this one as its
	// secondary (--allow-peers); empty: any host the CA or key admits.
	allowPeers []string
	arbiterDir string
	// arbiterKind is --arbiter (file or etcd); etcd how to reach etcd.
	arbiterKind string
	etcd        etcdConfig
	hostName    string
	mode        lockstep.Mode
	tlsDir      string
	tlsName     string
	pskFile     string
	// transport: auto, rdma, shm or tcp (daemon_transport.go); shmDir
	// holds the shm region files.
	transport string
	shmDir    string
	ringSpin  time.Duration

	control          string
	metricsListen    string
	tick             time.Duration
	heartbeatTicks   int
	peerTimeoutTicks int
	// heartbeatInterval and heartbeatTimeout are the transport's: a peer
	// silent this long on every lane is lost.
	heartbeatInterval time.Duration
	heartbeatTimeout  time.Duration
	// joinHeartbeatTimeout replaces heartbeatTimeout while a secondary
	// joins (setHeartbeatTimeouts).
	joinHeartbeatTimeout time.Duration
	window               int
	precopyRounds        int
	waitForSecondary     bool

	// The reachability rule (daemon_reach.go): no targets, no rule.
	reachCheck      []netip.Addr
	reachLink       string
	reachInterval   time.Duration
	reachLostAfter  time.Duration
	reachYieldAfter time.Duration

	logLevel  string
	logFormat string
}

// Defaults of the daemon's flags.
const (
	defaultGuest      = "vmm/guests/build/kvstore"
	defaultMemBytes   = 16 << 20
	defaultDiskBytes  = 4 << 20
	defaultListen     = ":7070"
	defaultControlDir = "/run/ftvm"
	defaultVMID       = "kvstore"
)

// daemonPeerTimeoutTicks is the default progress check: 1 s at the default
// 10 ms tick. A 10-minute soak under load on a 2-core PVM machine saw a
// process of normal priority not run for up to 334 ms, and a pair in step
// fail over by itself at 300 ms (30 ticks) while the transport's
// real-time heartbeats had flowed throughout; this check is only for a
// peer whose heartbeats come but whose daemon is stuck.
const daemonPeerTimeoutTicks = 100

// defaultDaemonHeartbeatTimeout is --heartbeat-timeout's default: the
// transport's own (its doc says why it is 50 ms).
const defaultDaemonHeartbeatTimeout = tcpfallback.DefaultHeartbeatTimeout

// defaultJoinHeartbeatTimeout: the pauses of 100-300 ms seen while a
// secondary restores a checkpoint on a loaded 2-core machine.
const defaultJoinHeartbeatTimeout = 300 * time.Millisecond

// daemonFlags declares the flags of one role on fs and returns the
// function that checks and converts them once parsed.
func daemonFlags(fs *flag.FlagSet, role wire.Role) func() (*daemonConfig, error) {
	c := &daemonConfig{role: role}
	fs.String("config", "", "read flags from this file: one `name = value` per line, # comments; command-line flags win")
	fs.StringVar(&c.vmID, "vm-id", defaultVMID, "name of the protected VM; both hosts and the arbiter use it")
	fs.StringVar(&c.guest, "guest", defaultGuest, "guest program (a static ELF; build them with make guests)")
	fs.StringVar(&c.cmdline, "cmdline", "", "guest command line, e.g. \"ip=10.77.0.10\"")
	mem := fs.String("mem", "16MiB", "guest memory: a multiple of 2 MiB from 8 MiB to 2 GiB")
	fs.StringVar(&c.console, "console", "-", "where released console output goes: - for stdout, or a file (appended)")
	fs.StringVar(&c.disk, "disk", "", "this host's copy of the guest's disk (created with --disk-size if missing; all its blocks are reserved at start, and a disk its filesystem cannot hold is refused); empty: no disk")
	diskSize := fs.String("disk-size", "4MiB", "size of a disk created by --disk")
	fs.BoolVar(&c.sharedStorage, "shared-storage", false, "the hosts share one disk file: checkpoints carry no disk contents and a secondary never writes it")
	fs.StringVar(&c.tap, "tap", "", "TAP interface of the VM's NIC (must exist: ip tuntap add dev NAME mode tap); a secondary opens it only when it goes live")
	fs.StringVar(&c.udpNIC, "udp-nic", "", "instead of --tap, carry Ethernet frames in UDP datagrams: LOCAL,PEER (host:port each); needs no root")
	mac := fs.String("mac", "02:66:74:76:6d:01", "the VM NIC's MAC address")
	vmIP := fs.String("vm-ip", "", "the guest's IPv4 address, announced by gratuitous ARP when this host goes live (default: ip= of --cmdline)")
	fs.StringVar(&c.listen, "listen", defaultListen, "address this host accepts a secondary on when it is primary (host:port)")
	if role == wire.RoleSecondary {
		fs.StringVar(&c.peer, "peer", "", "the primary to join (host:port of its --listen); required")
		fs.StringVar(&c.peerName, "peer-name", "", "the primary's name: a name in its certificate, or its --tls-name under --psk-file (default with TLS: the host part of --peer, which must then be a name the certificate carries: give --peer-name when --peer is an address); a primary that is not it is refused")
	} else {
		fs.BoolVar(&c.waitForSecondary, "wait-for-secondary", false, "keep the VM paused until a secondary is in step, so that no output leaves unprotected")
	}
	fs.StringVar(&c.arbiterDir, "arbiter-dir", "", "with --arbiter file: directory on storage all hosts share, for the split-brain lock (created if missing); required")
	checkArbiter := arbiterFlags(fs, c)
	fs.StringVar(&c.hostName, "host-name", "", "this host's name in the arbiter's record: a host that stopped cleanly as primary may start as primary again by itself (default: --tls-name, else the host name)")
	mode := fs.String("mode", "receipt", "when an output may leave: receipt (its log entries reached the secondary) or compare (the secondary reproduced it)")
	allow := fs.String("allow-peers", "", "comma-separated names of the hosts that may join this one as its secondary: names in their certificates, or their --tls-name under --psk-file; any other host is refused and logged (default on a secondary: --peer-name; on a primary: any host the CA or key admits, with a warning)")
	fs.StringVar(&c.tlsDir, "tls-dir", "", "directory with ca.pem, NAME.pem, NAME-key.pem (ftvm certs makes test ones): mutual TLS 1.3")
	fs.StringVar(&c.tlsName, "tls-name", "", "this host's name: its certificate NAME.pem in --tls-dir, or under --psk-file the name it presents to its peer (default: the host name)")
	fs.StringVar(&c.transport, "transport", "auto", "what carries the control lane (log entries, acknowledgements) once the peer is authenticated: auto (rdma when this host has an RDMA device on the route to the peer, else tcp), rdma, shm (a shared-memory ring with a peer daemon on this same host) or tcp; checkpoints, set-up and heartbeats always go by TCP, and both hosts must agree or the pair stays on tcp")
	fs.DurationVar(&c.ringSpin, "ring-spin", 0, "with a ring (shm, rdma): how long the ring's poller spins after the last frame before it sleeps until the next; 0 sleeps at once (best where cores are shared: a spinning poller takes the vCPU's core), 50µs suits hosts with a core to spare per daemon")
	fs.StringVar(&c.shmDir, "shm-dir", "", "with --transport shm: directory for the ring files, which both daemons must see (default /dev/shm, else the temporary directory)")
	fs.StringVar(&c.pskFile, "psk-file", "", "instead of TLS, authenticate with the pre-shared key in this file (trusted fabrics only: frames are not encrypted)")
	fs.StringVar(&c.control, "control", "", "control socket for ftvm status (default "+defaultControlDir+"/VM-ID.sock; two daemons of one VM on one machine each need their own)")
	fs.StringVar(&c.metricsListen, "metrics-listen", "", "serve Prometheus metrics at http://ADDR/metrics (host:port, e.g. 127.0.0.1:9100; names in the README); default: off")
	fs.DurationVar(&c.tick, "tick", 10*time.Millisecond, "length of one protocol tick")
	fs.IntVar(&c.heartbeatTicks, "heartbeat-ticks", lockstep.DefaultHeartbeatTicks, "ticks between heartbeats")
	fs.IntVar(&c.peerTimeoutTicks, "peer-timeout-ticks", daemonPeerTimeoutTicks, "the progress check: ticks without a protocol message from the peer's daemon after which it is taken for dead although its transport's heartbeats still come (its daemon is stuck); a broken connection, or one silent for --heartbeat-timeout, counts at once")
	fs.DurationVar(&c.heartbeatInterval, "heartbeat-interval", tcpfallback.DefaultHeartbeatInterval, "the transport sends a heartbeat on each idle lane this often, from a real-time thread (SCHED_FIFO where the process may; a warning says when it may not), and looks at its lanes twice as often")
	fs.DurationVar(&c.joinHeartbeatTimeout, "join-heartbeat-timeout", defaultJoinHeartbeatTimeout, "the --heartbeat-timeout in force while a secondary joins (until it is in step): restoring a checkpoint keeps both daemons busier than anything in step, and a join that breaks only starts again (a secondary not in step cannot take over); at least --heartbeat-timeout")
	fs.DurationVar(&c.heartbeatTimeout, "heartbeat-timeout", defaultDaemonHeartbeatTimeout, "the peer is taken for lost when nothing (a frame, a heartbeat, unread bytes in a socket) came from it on any lane for this long, counted only while this host's watchdog runs itself, so a pause of this host or of the whole machine never counts; a longer one rides out a peer that is not run at the cost of a slower take-over when it really goes silent; both hosts should use the same; at least 2 x --heartbeat-interval")
	reachCheck := fs.String("reach-check", "", "IPv4 addresses on the VM's network (its gateway, say), comma-separated, pinged every --reach-interval: while none answers, this host never asks the arbiter for the VM, and a protected primary yields after --reach-yield-after (default: no check)")
	fs.StringVar(&c.reachLink, "reach-link", "", "with --reach-check: the uplink to the VM's network (its carrier must be up too)")
	fs.DurationVar(&c.reachInterval, "reach-interval", 10*time.Millisecond, "with --reach-check: time between two pings of each target")
	fs.DurationVar(&c.reachLostAfter, "reach-lost-after", 40*time.Millisecond, "with --reach-check: the VM's network is lost once no target answered for this long; shorter than the peer timeout (--heartbeat-timeout)")
	fs.DurationVar(&c.reachYieldAfter, "reach-yield-after", time.Second, "with --reach-check: a protected primary that lost the VM's network for this long stops (exit 3) so that its secondary takes over")
	fs.IntVar(&c.window, "log-window", lockstep.DefaultLogWindowEntries, "log entries the primary runs ahead of its secondary before it stalls the vCPU")
	fs.IntVar(&c.precopyRounds, "precopy-rounds", 2, "copies of the running VM a primary sends a joining secondary before it pauses for the rest (0: one paused full checkpoint); give both hosts the same, and the same --mem, --disk-size and --log-window: they size the largest checkpoint a host accepts")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.logFormat, "log-format", "text", "text or json")

	return func() (*daemonConfig, error) {
		var err error
		if c.memBytes, err = parseSize(*mem); err != nil {
			return nil, fmt.Errorf("--mem: %w", err)
		}
		if c.diskBytes, err = parseSize(*diskSize); err != nil {
			return nil, fmt.Errorf("--disk-size: %w", err)
		}
		if c.diskBytes%vmm.BlockSectorBytes != 0 {
			return nil, fmt.Errorf("--disk-size %s is not a multiple of the %d-byte sector", *diskSize, vmm.BlockSectorBytes)
		}
		if c.mac, err = parseMAC(*mac); err != nil {
			return nil, fmt.Errorf("--mac: %w", err)
		}
		switch *mode {
		case "receipt":
			c.mode = lockstep.AckOnReceipt
		case "compare":
			c.mode = lockstep.AckOnCompare
		default:
			return nil, fmt.Errorf("--mode %q: want receipt or compare", *mode)
		}
		ip := *vmIP
		if ip == "" {
			ip = cmdlineValue(c.cmdline, "ip")
		}
		if ip != "" {
			if c.vmIP, err = netip.ParseAddr(ip); err != nil || !c.vmIP.Is4() {
				return nil, fmt.Errorf("--vm-ip %q is not an IPv4 address", ip)
			}
		}
		if c.vmID == "" || len(c.vmID) > wire.MaxVMIDBytes {
			return nil, fmt.Errorf("--vm-id %q: give 1 to %d bytes", c.vmID, wire.MaxVMIDBytes)
		}
		if err := checkArbiter(); err != nil {
			return nil, err
		}
		if role == wire.RoleSecondary && c.peer == "" {
			return nil, errors.New("--peer is required: the host:port the primary listens on")
		}
		if c.peer != "" {
			if _, _, err := net.SplitHostPort(c.peer); err != nil {
				return nil, fmt.Errorf("--peer %q: %w", c.peer, err)
			}
		}
		if _, _, err := net.SplitHostPort(c.listen); err != nil {
			return nil, fmt.Errorf("--listen %q: %w", c.listen, err)
		}
		if c.metricsListen != "" {
			if h, _, err := net.SplitHostPort(c.metricsListen); err != nil || h == "" {
				return nil, fmt.Errorf("--metrics-listen %q: want HOST:PORT, e.g. 127.0.0.1:9100 for this host only or 0.0.0.0:9100 for every interface", c.metricsListen)
			}
		}
		switch c.transport {
		case transportAuto, transportRDMA, transportShm, transportTCP:
		default:
			return nil, fmt.Errorf("--transport %q: want auto, rdma, shm or tcp", c.transport)
		}
		if c.ringSpin < 0 {
			return nil, fmt.Errorf("--ring-spin %v is negative", c.ringSpin)
		}
		if c.shmDir != "" && c.transport != transportShm {
			return nil, fmt.Errorf("--shm-dir is for --transport shm (this host uses --transport %s)", c.transport)
		}
		for _, a := range strings.Split(*reachCheck, ",") {
			if a = strings.TrimSpace(a); a == "" {
				continue
			}
			ip, err := netip.ParseAddr(a)
			if err != nil || !ip.Is4() {
				return nil, fmt.Errorf("--reach-check %q: want IPv4 addresses, comma-separated", a)
			}
			c.reachCheck = append(c.reachCheck, ip)
		}
		if c.reachLink != "" && len(c.reachCheck) == 0 {
			return nil, errors.New("--reach-link needs --reach-check: give an address on the VM's network that must answer")
		}
		if len(c.reachCheck) > 0 {
			if c.reachInterval <= 0 || c.reachLostAfter < 2*c.reachInterval {
				return nil, fmt.Errorf("--reach-lost-after %v must cover at least two --reach-interval %v, or one lost ping looks like a lost network", c.reachLostAfter, c.reachInterval)
			}
			if pt := time.Duration(c.peerTimeoutTicks) * c.tick; c.reachLostAfter >= min(pt, c.heartbeatTimeout) {
				return nil, fmt.Errorf("--reach-lost-after %v must be shorter than the peer timeout (%v), or a host cut off from the VM's network would not know it yet when it asks the arbiter: lower it (with --reach-interval) or raise --heartbeat-timeout above it", c.reachLostAfter, min(pt, c.heartbeatTimeout))
			}
			if c.reachYieldAfter <= 0 {
				return nil, fmt.Errorf("--reach-yield-after %v must be positive", c.reachYieldAfter)
			}
		}
		if c.tap != "" && c.udpNIC != "" {
			return nil, errors.New("--tap and --udp-nic are alternatives: give one")
		}
		if c.udpNIC != "" && len(strings.Split(c.udpNIC, ",")) != 2 {
			return nil, fmt.Errorf("--udp-nic %q: want LOCAL,PEER", c.udpNIC)
		}
		if (c.tlsDir == "") == (c.pskFile == "") {
			return nil, errors.New("authenticate the peer: give --tls-dir (mutual TLS; ftvm certs writes test certificates) or --psk-file, not both")
		}
		if c.tlsName == "" {
			if c.tlsName, err = os.Hostname(); err != nil {
				return nil, fmt.Errorf("--tls-name not given and the host name is unknown: %w", err)
			}
		}
		if c.hostName == "" {
			c.hostName = c.tlsName
		}
		if c.hostName == "" {
			if c.hostName, err = os.Hostname(); err != nil {
				return nil, fmt.Errorf("--host-name not given and the host name is unknown: %w", err)
			}
		}
		if len(c.hostName) > 64 {
			return nil, fmt.Errorf("--host-name %q: give at most 64 bytes", c.hostName)
		}
		c.peerNameGiven = c.peerName != ""
		if c.peerName == "" && c.peer != "" {
			c.peerName, _, _ = net.SplitHostPort(c.peer)
			c.peerNameFromAddr = net.ParseIP(c.peerName) != nil
		}
		for _, n := range strings.Split(*allow, ",") {
			if n = strings.TrimSpace(n); n != "" {
				c.allowPeers = append(c.allowPeers, n)
			}
		}
		if len(c.allowPeers) == 0 && role == wire.RoleSecondary && (c.peerNameGiven || c.pskFile == "") {
			// The host most likely to join a secondary that went live
			// is the primary it replaced, restarted.
			c.allowPeers = []string{c.peerName}
		}
		if c.control == "" {
			c.control = defaultControlDir + "/" + c.vmID + ".sock"
		}
		if c.precopyRounds < 0 {
			return nil, fmt.Errorf("--precopy-rounds %d is negative", c.precopyRounds)
		}
		if c.tick <= 0 {
			return nil, fmt.Errorf("--tick %v must be positive", c.tick)
		}
		if c.heartbeatInterval <= 0 {
			return nil, fmt.Errorf("--heartbeat-interval %v must be positive", c.heartbeatInterval)
		}
		if least := 2 * c.heartbeatInterval; c.heartbeatTimeout < least {
			return nil, fmt.Errorf("--heartbeat-timeout %v is too short: heartbeats go every %v (--heartbeat-interval), so a timeout under %v would take a live peer for lost", c.heartbeatTimeout, c.heartbeatInterval, least)
		}
		if c.joinHeartbeatTimeout < c.heartbeatTimeout {
			return nil, fmt.Errorf("--join-heartbeat-timeout %v is shorter than --heartbeat-timeout %v: a join may only wait longer", c.joinHeartbeatTimeout, c.heartbeatTimeout)
		}
		if pt := time.Duration(c.peerTimeoutTicks) * c.tick; pt <= c.heartbeatTimeout {
			return nil, fmt.Errorf("--peer-timeout-ticks %d x --tick %v = %v must be longer than --heartbeat-timeout %v: it is the slower check, for a peer whose heartbeats come but whose daemon is stuck", c.peerTimeoutTicks, c.tick, pt, c.heartbeatTimeout)
		}
		switch c.logFormat {
		case "text", "json":
		default:
			return nil, fmt.Errorf("--log-format %q: want text or json", c.logFormat)
		}
		if _, err := parseLogLevel(c.logLevel); err != nil {
			return nil, err
		}
		return c, nil
	}
}

// applyConfigFile sets, from the file named by --config, every flag the
// command line did not set. Lines are `name = value` (or `name value`);
// blank lines and lines starting with # are ignored; a bool flag may be
// given as just its name.
func applyConfigFile(fs *flag.FlagSet) error {
	path := fs.Lookup("config").Value.String()
	if path == "" {
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("--config: %w", err)
	}
	defer f.Close()
	set := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		name, value, found := strings.Cut(text, "=")
		if !found {
			name, value, found = strings.Cut(text, " ")
		}
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		name = strings.TrimLeft(name, "-")
		fl := fs.Lookup(name)
		if fl == nil || name == "config" {
			return fmt.Errorf("%s:%d: unknown setting %q (settings are the command's flags, see --help)", path, line, name)
		}
		if !found {
			if b, ok := fl.Value.(interface{ IsBoolFlag() bool }); !ok || !b.IsBoolFlag() {
				return fmt.Errorf("%s:%d: %s needs a value: write %s = VALUE", path, line, name, name)
			}
			value = "true"
		}
		if set[name] {
			continue
		}
		if err := fs.Set(name, strings.Trim(value, `"`)); err != nil {
			return fmt.Errorf("%s:%d: %s: %w", path, line, name, err)
		}
	}
	return sc.Err()
}

// parseSize reads a byte count: plain bytes, or a number with K, M, G
// (powers of 1024; KiB, MiB, GiB and KB, MB, GB say the same).
func parseSize(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	mult := uint64(1)
	for _, u := range []struct {
		suffix string
		m      uint64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"GB", 1 << 30}, {"MB", 1 << 20}, {"KB", 1 << 10}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSuffix(t, u.suffix), u.m
			break
		}
	}
	n, err := strconv.ParseUint(strings.TrimSpace(t), 10, 64)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("%q is not a size: write bytes or a number with K, M or G", s)
	}
	if n > (1<<63)/mult {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return n * mult, nil
}

func parseMAC(s string) ([6]byte, error) {
	var m [6]byte
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return m, fmt.Errorf("%q is not a 6-byte MAC address (write 02:66:74:76:6d:01)", s)
	}
	copy(m[:], hw)
	if m[0]&1 != 0 {
		return m, fmt.Errorf("%s is a multicast address; a NIC needs a unicast one", s)
	}
	return m, nil
}

// cmdlineValue is the value of key in a guest command line of key=value
// words ("" when absent).
func cmdlineValue(cmdline, key string) string {
	for _, w := range strings.Fields(cmdline) {
		if k, v, ok := strings.Cut(w, "="); ok && k == key {
			return v
		}
	}
	return ""
}
