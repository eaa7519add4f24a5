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

	listen     string
	peer       string
	peerName   string
	arbiterDir string
	mode       lockstep.Mode
	tlsDir     string
	tlsName    string
	pskFile    string

	control          string
	tick             time.Duration
	heartbeatTicks   int
	peerTimeoutTicks int
	window           int
	precopyRounds    int
	waitForSecondary bool

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
	fs.StringVar(&c.disk, "disk", "", "this host's copy of the guest's disk (created with --disk-size if missing); empty: no disk")
	diskSize := fs.String("disk-size", "4MiB", "size of a disk created by --disk")
	fs.BoolVar(&c.sharedStorage, "shared-storage", false, "the hosts share one disk file: checkpoints carry no disk contents and a secondary never writes it")
	fs.StringVar(&c.tap, "tap", "", "TAP interface of the VM's NIC (must exist: ip tuntap add dev NAME mode tap); a secondary opens it only when it goes live")
	fs.StringVar(&c.udpNIC, "udp-nic", "", "instead of --tap, carry Ethernet frames in UDP datagrams: LOCAL,PEER (host:port each); needs no root")
	mac := fs.String("mac", "02:66:74:76:6d:01", "the VM NIC's MAC address")
	vmIP := fs.String("vm-ip", "", "the guest's IPv4 address, announced by gratuitous ARP when this host goes live (default: ip= of --cmdline)")
	fs.StringVar(&c.listen, "listen", defaultListen, "address this host accepts a secondary on when it is primary (host:port)")
	if role == wire.RoleSecondary {
		fs.StringVar(&c.peer, "peer", "", "the primary to join (host:port of its --listen); required")
		fs.StringVar(&c.peerName, "peer-name", "", "the TLS name in the primary's certificate (default: the host part of --peer)")
	} else {
		fs.BoolVar(&c.waitForSecondary, "wait-for-secondary", false, "keep the VM paused until a secondary is in step, so that no output leaves unprotected")
	}
	fs.StringVar(&c.arbiterDir, "arbiter-dir", "", "directory on storage all hosts share, for the split-brain lock (created if missing); required")
	mode := fs.String("mode", "receipt", "when an output may leave: receipt (its log entries reached the secondary) or compare (the secondary reproduced it)")
	fs.StringVar(&c.tlsDir, "tls-dir", "", "directory with ca.pem, NAME.pem, NAME-key.pem (ftvm certs makes test ones): mutual TLS 1.3")
	fs.StringVar(&c.tlsName, "tls-name", "", "this host's certificate name in --tls-dir (default: the host name)")
	fs.StringVar(&c.pskFile, "psk-file", "", "instead of TLS, authenticate with the pre-shared key in this file (trusted fabrics only: frames are not encrypted)")
	fs.StringVar(&c.control, "control", "", "control socket for ftvm status (default "+defaultControlDir+"/VM-ID.sock)")
	fs.DurationVar(&c.tick, "tick", 10*time.Millisecond, "length of one protocol tick")
	fs.IntVar(&c.heartbeatTicks, "heartbeat-ticks", lockstep.DefaultHeartbeatTicks, "ticks between heartbeats")
	fs.IntVar(&c.peerTimeoutTicks, "peer-timeout-ticks", lockstep.DefaultPeerTimeoutTicks, "ticks of silence after which the peer is taken for dead (a broken connection counts at once)")
	fs.IntVar(&c.window, "log-window", lockstep.DefaultLogWindowEntries, "log entries the primary runs ahead of its secondary before it stalls the vCPU")
	fs.IntVar(&c.precopyRounds, "precopy-rounds", 2, "copies of the running VM a primary sends a joining secondary before it pauses for the rest (0: one paused full checkpoint); give both hosts the same, and the same --mem and --disk-size: they size the largest checkpoint a host accepts")
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
		if c.arbiterDir == "" {
			return nil, errors.New("--arbiter-dir is required: a directory every host of this VM shares (the split-brain lock lives there)")
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
		if c.tap != "" && c.udpNIC != "" {
			return nil, errors.New("--tap and --udp-nic are alternatives: give one")
		}
		if c.udpNIC != "" && len(strings.Split(c.udpNIC, ",")) != 2 {
			return nil, fmt.Errorf("--udp-nic %q: want LOCAL,PEER", c.udpNIC)
		}
		if (c.tlsDir == "") == (c.pskFile == "") {
			return nil, errors.New("authenticate the peer: give --tls-dir (mutual TLS; ftvm certs writes test certificates) or --psk-file, not both")
		}
		if c.tlsDir != "" && c.tlsName == "" {
			if c.tlsName, err = os.Hostname(); err != nil {
				return nil, fmt.Errorf("--tls-name not given and the host name is unknown: %w", err)
			}
		}
		if c.peerName == "" && c.peer != "" {
			c.peerName, _, _ = net.SplitHostPort(c.peer)
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
