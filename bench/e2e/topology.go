package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Host names one machine of the test bed.
type Host string

// The machines of the test bed. The string is also the name of the host's
// port on the switch.
const (
	HostA  Host = "a"  // first VM host: 10.77.0.1, VM attached to its tap0
	HostB  Host = "b"  // second VM host: 10.77.0.2, VM attached to its tap0
	Client Host = "c"  // the client: 10.77.0.3
	HostD  Host = "d"  // third VM host (WithPool): 10.77.0.4
	HostE  Host = "e"  // fourth VM host (WithPool): 10.77.0.5
	Switch Host = "sw" // the switch: bridge br0 with ports a, b and c; no address
)

// hosts lists every machine, the switch first: the order Up builds them in.
// WithPool adds HostD and HostE, WithEtcd EtcdMembers after them.
var hosts = []Host{Switch, HostA, HostB, Client}

// PoolHosts are the VM hosts of a test bed made WithPool.
var PoolHosts = []Host{HostA, HostB, HostD, HostE}

// PoolVMs is how many VMs a test bed made WithPool has a TAP for on every
// VM host: VM i (0-based) is PoolVMAddr(i) on PoolTAP(i) with PoolVMMAC(i).
const PoolVMs = 3

// PoolTAP is VM i's TAP on each VM host of a pool bed (tap0 is TAPName).
func PoolTAP(i int) string { return fmt.Sprintf("tap%d", i) }

// PoolVMAddr is VM i's address on a pool bed (VM 0's is VMAddr).
func PoolVMAddr(i int) string { return fmt.Sprintf("10.77.0.%d", 10+i) }

// PoolVMMAC is VM i's MAC on a pool bed (VM 0's is VMMAC).
func PoolVMMAC(i int) string { return fmt.Sprintf("02:66:74:76:6d:%02x", 1+i) }

// Addresses and names on the test bed. They are the same in every run; only
// the namespace names carry the run's prefix.
const (
	Subnet     = "10.77.0.0/24"      // the one network every machine is on
	VMAddr     = "10.77.0.10"        // the protected VM's address, whichever host runs it
	VMMAC      = "02:66:74:76:6d:01" // the protected VM's MAC ("ftvm" 01)
	TAPName    = "tap0"              // the VM's TAP on hosts a and b, a port of br0
	BridgeName = "br0"               // the switch's bridge, and each VM host's bridge
	LinkName   = "eth0"              // each machine's veth to the switch
)

// Timeouts, so that nothing waits forever.
const (
	// DefaultCommandTimeout bounds each ip or nft command Up, Down, Run,
	// CutLink and HealLink run, and each Dial.
	DefaultCommandTimeout = 10 * time.Second
	// DefaultPingTimeout bounds Ping when its context has no deadline.
	DefaultPingTimeout = 5 * time.Second
)

// netnsDir is where iproute2 keeps named network namespaces (NETNS_RUN_DIR).
const netnsDir = "/var/run/netns"

// cutTable is the nftables table (bridge family, in the switch) that CutLink
// installs and HealLink removes.
const cutTable = "ftvm_cut"

var hostAddrs = map[Host]netip.Addr{
	HostA:  netip.AddrFrom4([4]byte{10, 77, 0, 1}),
	HostB:  netip.AddrFrom4([4]byte{10, 77, 0, 2}),
	Client: netip.AddrFrom4([4]byte{10, 77, 0, 3}),
	HostD:  netip.AddrFrom4([4]byte{10, 77, 0, 4}),
	HostE:  netip.AddrFrom4([4]byte{10, 77, 0, 5}),
	Etcd1:  netip.AddrFrom4([4]byte{10, 77, 0, 21}),
	Etcd2:  netip.AddrFrom4([4]byte{10, 77, 0, 22}),
	Etcd3:  netip.AddrFrom4([4]byte{10, 77, 0, 23}),
}

// Each machine's address on the wire is fixed (locally administered,
// "ftvh"/"ftvc"), so that neighbour tables and captures read the same in
// every run. On a VM host it is the MAC of br0, which holds the address.
var hostMACs = map[Host]string{
	HostA:  "02:66:74:76:68:01",
	HostB:  "02:66:74:76:68:02",
	Client: "02:66:74:76:63:01",
	HostD:  "02:66:74:76:68:03",
	HostE:  "02:66:74:76:68:04",
	Etcd1:  "02:66:74:76:65:01",
	Etcd2:  "02:66:74:76:65:02",
	Etcd3:  "02:66:74:76:65:03",
}

// HostAddr returns the IPv4 address of a machine, or the zero Addr for the
// switch, which has none.
func HostAddr(h Host) netip.Addr { return hostAddrs[h] }

// HostMAC returns the MAC address a machine's address lives on (br0 on a VM
// host, eth0 on the client), or nil for the switch.
func HostMAC(h Host) net.HardwareAddr {
	s, ok := hostMACs[h]
	if !ok {
		return nil
	}
	mac, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return mac
}

// Topology is one running test bed: four network namespaces wired as doc.go
// draws them. Make one with Up and end it with Down. Its methods may be called
// from several goroutines at once.
type Topology struct {
	prefix     string
	ipPath     string
	nftPath    string
	logDir     string
	cmdTimeout time.Duration
	procSeq    atomic.Int64 // numbers the log files of Start

	// machines are the namespaces Up built, in order: hosts, with
	// WithPool HostD and HostE, and with WithEtcd the etcd members.
	machines []Host
	// taps are the TAPs each VM host has: TAPName, and with WithPool
	// one for each of PoolVMs.
	taps []string

	mu   sync.Mutex  // guards lock
	lock *prefixLock // nil once Down has run
}

// Option changes how Up builds a Topology.
type Option func(*options)

type options struct {
	logDir     string
	cmdTimeout time.Duration
	etcd       bool
	pool       bool
}

// WithPool adds two more VM hosts, d and e (10.77.0.4 and .5), built like
// a and b, and gives every VM host PoolVMs TAPs (tap0, tap1, tap2), one
// per VM of a pool (ftvm host, ftvm cluster): VM i is PoolVMAddr(i).
func WithPool() Option { return func(o *options) { o.pool = true } }

// WithEtcd adds three machines for an etcd cluster (EtcdMembers, etcd.go),
// each in a namespace of its own on the switch.
func WithEtcd() Option { return func(o *options) { o.etcd = true } }

// WithLogDir puts the output files of Start in dir, which must exist. By
// default Up makes a new directory under os.TempDir; either way Down leaves
// it in place, for failure reports.
func WithLogDir(dir string) Option { return func(o *options) { o.logDir = dir } }

// WithCommandTimeout bounds each command the Topology runs by d instead of
// DefaultCommandTimeout.
func WithCommandTimeout(d time.Duration) Option { return func(o *options) { o.cmdTimeout = d } }

var prefixPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$`)

// ValidatePrefix reports whether prefix can name a test bed: 1 to 40
// letters, digits, '.', '_' or '-', starting with a letter or digit.
func ValidatePrefix(prefix string) error {
	if !prefixPattern.MatchString(prefix) {
		return fmt.Errorf("test bed prefix %q is not valid: use 1 to 40 letters, digits, '.', '_' or '-', starting with a letter or digit", prefix)
	}
	return nil
}

// Up builds the test bed whose namespaces are named after prefix, and returns
// it running. It first takes a lock on the prefix (a second Up of the same
// prefix while the first is alive fails, naming the holder), then removes
// whatever a crashed run of the same prefix left behind: processes still in
// those namespaces are killed, and the namespaces deleted. If Up fails it
// cleans up what it made.
//
//	topo, err := e2e.Up(ctx, "ftvm-demo")
//	if err != nil {
//		return err
//	}
//	defer topo.Down()
//
// ctx bounds the whole of Up; each command is further bounded by the command
// timeout.
func Up(ctx context.Context, prefix string, opts ...Option) (_ *Topology, err error) {
	if err := ValidatePrefix(prefix); err != nil {
		return nil, err
	}
	o := options{cmdTimeout: DefaultCommandTimeout}
	for _, opt := range opts {
		opt(&o)
	}
	ipPath, nftPath, err := findTools()
	if err != nil {
		return nil, err
	}
	lock, err := lockPrefix(prefix)
	if err != nil {
		return nil, err
	}
	t := &Topology{prefix: prefix, ipPath: ipPath, nftPath: nftPath, logDir: o.logDir, cmdTimeout: o.cmdTimeout, lock: lock,
		machines: append([]Host(nil), hosts...), taps: []string{TAPName}}
	if o.pool {
		t.machines = append(t.machines, HostD, HostE)
		t.taps = nil
		for i := 0; i < PoolVMs; i++ {
			t.taps = append(t.taps, PoolTAP(i))
		}
	}
	if o.etcd {
		t.machines = append(t.machines, EtcdMembers...)
	}
	defer func() {
		if err != nil {
			if derr := t.Down(); derr != nil {
				err = errors.Join(err, fmt.Errorf("cleaning up after the failed Up: %w", derr))
			}
		}
	}()
	if err := t.deleteNamespaces(ctx); err != nil {
		return nil, fmt.Errorf("removing leftovers of test bed %q: %w", prefix, err)
	}
	if t.logDir == "" {
		if t.logDir, err = os.MkdirTemp("", "ftvm-e2e-"+prefix+"-"); err != nil {
			return nil, fmt.Errorf("making the log directory: %w", err)
		}
	}
	if err := t.build(ctx); err != nil {
		return nil, fmt.Errorf("building test bed %q: %w", prefix, err)
	}
	return t, nil
}

func (t *Topology) build(ctx context.Context) error {
	for _, h := range t.machines {
		ns := t.Namespace(h)
		if _, err := t.ip(ctx, "netns", "add", ns); err != nil {
			return err
		}
		if err := t.disableIPv6(h); err != nil {
			return err
		}
		if _, err := t.ip(ctx, "-n", ns, "link", "set", "dev", "lo", "up"); err != nil {
			return err
		}
	}
	sw := t.Namespace(Switch)
	steps := [][]string{
		{"-n", sw, "link", "add", BridgeName, "type", "bridge", "stp_state", "0"},
		{"-n", sw, "link", "set", "dev", BridgeName, "up"},
	}
	for _, h := range t.machines[1:] {
		ns, port := t.Namespace(h), string(h)
		steps = append(steps,
			[]string{"-n", ns, "link", "add", LinkName, "type", "veth", "peer", "name", port, "netns", sw},
			[]string{"-n", sw, "link", "set", "dev", port, "master", BridgeName, "up"},
		)
		addr := HostAddr(h).String() + "/24"
		if !isVMHost(h) {
			steps = append(steps,
				[]string{"-n", ns, "link", "set", "dev", LinkName, "address", hostMACs[h], "up"},
				[]string{"-n", ns, "addr", "add", addr, "dev", LinkName},
			)
			continue
		}
		steps = append(steps,
			[]string{"-n", ns, "link", "add", BridgeName, "type", "bridge", "stp_state", "0"},
			// Set, not inherited: a bridge otherwise takes the lowest MAC of
			// its ports, which would change as ports come and go.
			[]string{"-n", ns, "link", "set", "dev", BridgeName, "address", hostMACs[h]},
			[]string{"-n", ns, "link", "set", "dev", LinkName, "master", BridgeName, "up"},
		)
		for _, tap := range t.taps {
			steps = append(steps,
				[]string{"-n", ns, "tuntap", "add", "dev", tap, "mode", "tap"},
				[]string{"-n", ns, "link", "set", "dev", tap, "master", BridgeName, "up"},
			)
		}
		steps = append(steps,
			[]string{"-n", ns, "link", "set", "dev", BridgeName, "up"},
			[]string{"-n", ns, "addr", "add", addr, "dev", BridgeName},
		)
	}
	for _, args := range steps {
		if _, err := t.ip(ctx, args...); err != nil {
			return err
		}
	}
	return nil
}

// isVMHost says whether h is a machine that runs VMs (a bridge and TAPs).
func isVMHost(h Host) bool { return h == HostA || h == HostB || h == HostD || h == HostE }

// disableIPv6 turns IPv6 off in a namespace before any device is made there,
// so that the wire carries only what the test, the client and the VM send
// (no router solicitations, DAD or MLD reports). The test bed is IPv4 only.
func (t *Topology) disableIPv6(h Host) error {
	return t.InNamespace(h, func() error {
		for _, conf := range []string{"default", "all"} {
			path := "/proc/sys/net/ipv6/conf/" + conf + "/disable_ipv6"
			err := os.WriteFile(path, []byte("1\n"), 0)
			if errors.Is(err, fs.ErrNotExist) {
				return nil // a kernel without IPv6: nothing to quiet
			}
			if err != nil {
				return fmt.Errorf("disabling IPv6 in namespace %s: %w", t.Namespace(h), err)
			}
		}
		return nil
	})
}

// Down deletes every namespace of the test bed, with every device in it,
// after killing (SIGKILL) the processes still inside them, and releases the
// prefix. It is idempotent: later calls return nil. The log directory is
// left in place.
func (t *Topology) Down() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.lock == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*t.cmdTimeout)
	defer cancel()
	err := t.deleteNamespaces(ctx)
	if err != nil {
		// Keep the lock: Up of this prefix will try the clean-up again.
		return fmt.Errorf("tearing down test bed %q: %w", t.prefix, err)
	}
	err = t.lock.release()
	t.lock = nil
	return err
}

// deleteNamespaces removes whichever of the test bed's namespaces exist
// (the etcd members' too, which a crashed run may have left).
func (t *Topology) deleteNamespaces(ctx context.Context) error {
	var errs []error
	// Every machine any bed may have: a crashed run's leftovers may be
	// of a bed made with other options.
	for _, h := range append(append(append([]Host(nil), hosts...), HostD, HostE), EtcdMembers...) {
		ns := t.Namespace(h)
		if _, err := os.Stat(filepath.Join(netnsDir, ns)); errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err := t.killNamespace(ctx, ns); err != nil {
			errs = append(errs, err)
		}
		if _, err := t.ip(ctx, "netns", "delete", ns); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// killNamespace sends SIGKILL to every process in namespace ns but this one
// (whose main thread may have been left in a namespace by InNamespace).
// A process left there would otherwise keep the namespace, and its devices,
// alive after the name is gone.
func (t *Topology) killNamespace(ctx context.Context, ns string) error {
	out, err := t.ip(ctx, "netns", "pids", ns)
	if err != nil {
		return err
	}
	for _, field := range strings.Fields(string(out)) {
		pid, err := strconv.Atoi(field)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("killing pid %d left in namespace %s: %w", pid, ns, err)
		}
	}
	return nil
}

// Prefix returns the prefix the test bed's names carry.
func (t *Topology) Prefix() string { return t.prefix }

// LogDir returns the directory that holds the output files of Start.
func (t *Topology) LogDir() string { return t.logDir }

// Namespace returns the name of a machine's network namespace, as `ip netns`
// knows it: "<prefix>-a" for HostA, "<prefix>-sw" for Switch. It panics on a
// Host that is not one of the four.
func (t *Topology) Namespace(h Host) string {
	switch h {
	case HostA, HostB, HostD, HostE, Client, Switch, Etcd1, Etcd2, Etcd3:
		return t.prefix + "-" + string(h)
	}
	panic(fmt.Sprintf("e2e: unknown host %q (want %q, %q, %q or %q)", h, HostA, HostB, Client, Switch))
}

// Command returns, unstarted, the command that runs name with args inside a
// machine's network namespace (`ip netns exec <ns> name args...`). ip execs
// the program in its own place, so the Cmd's process is the program itself
// and signals reach it directly. ctx kills the process when done, as with
// exec.CommandContext.
func (t *Topology) Command(ctx context.Context, h Host, name string, args ...string) *exec.Cmd {
	argv := append([]string{"netns", "exec", t.Namespace(h), name}, args...)
	cmd := exec.CommandContext(ctx, t.ipPath, argv...)
	// Output pipes held by a grandchild must not keep Wait waiting forever.
	cmd.WaitDelay = time.Second
	return cmd
}

// Run runs name with args inside a machine's namespace, bounded by ctx and
// the command timeout, and returns its combined output. When it fails the
// error is a *CommandError with the command line and the output.
func (t *Topology) Run(ctx context.Context, h Host, name string, args ...string) ([]byte, error) {
	return t.exec(ctx, nil, append([]string{"netns", "exec", t.Namespace(h), name}, args...)...)
}

// CutLink makes the switch drop, silently and in both directions, every
// frame between ports a and b, as a pulled cable between the hosts would:
// neither host's stack is touched, nothing is answered, and the client still
// reaches both hosts. It installs an nftables table (bridge family, forward
// hook) in the switch's namespace, replacing it atomically if it is already
// there, so calling it twice is harmless.
func (t *Topology) CutLink(ctx context.Context) error {
	script := fmt.Sprintf(`add table bridge %[1]s
delete table bridge %[1]s
table bridge %[1]s {
	chain forward {
		type filter hook forward priority filter; policy accept;
		iifname "%[2]s" oifname "%[3]s" counter drop
		iifname "%[3]s" oifname "%[2]s" counter drop
	}
}
`, cutTable, HostA, HostB)
	if err := t.nft(ctx, script); err != nil {
		return fmt.Errorf("cutting the link between %s and %s: %w", HostA, HostB, err)
	}
	return nil
}

// HealLink undoes CutLink; it is harmless when the link is not cut.
func (t *Topology) HealLink(ctx context.Context) error {
	script := fmt.Sprintf("add table bridge %[1]s\ndelete table bridge %[1]s\n", cutTable)
	if err := t.nft(ctx, script); err != nil {
		return fmt.Errorf("healing the link between %s and %s: %w", HostA, HostB, err)
	}
	return nil
}

// isolateTable is the nftables table (bridge family, in the switch) that
// IsolateHost installs and RejoinHost removes.
const isolateTable = "ftvm_isolate"

// IsolateHost makes the switch drop, silently and in both directions, every
// frame to or from host h's port, as a pulled uplink cable would (or a
// dead switch port): h reaches nothing on the network and nothing reaches
// it, while its own stack, and whatever it shares with the other hosts
// outside the network (the arbiter's directory here), is untouched. Only
// one host is isolated at a time: calling it again moves the isolation.
// Frames between h and the hosts in keep still pass: with keep the other
// VM host, h loses the network the VM serves but not its peer, as a host
// with a separate replication link would.
func (t *Topology) IsolateHost(ctx context.Context, h Host, keep ...Host) error {
	var accept strings.Builder
	for _, k := range keep {
		fmt.Fprintf(&accept, "\t\tiifname \"%[1]s\" oifname \"%[2]s\" accept\n\t\tiifname \"%[2]s\" oifname \"%[1]s\" accept\n", h, k)
	}
	script := fmt.Sprintf(`add table bridge %[1]s
delete table bridge %[1]s
table bridge %[1]s {
	chain forward {
		type filter hook forward priority filter; policy accept;
%[3]s		iifname "%[2]s" counter drop
		oifname "%[2]s" counter drop
	}
}
`, isolateTable, h, accept.String())
	if err := t.nft(ctx, script); err != nil {
		return fmt.Errorf("isolating host %s: %w", h, err)
	}
	return nil
}

// RejoinHost undoes IsolateHost; it is harmless when no host is isolated.
func (t *Topology) RejoinHost(ctx context.Context) error {
	script := fmt.Sprintf("add table bridge %[1]s\ndelete table bridge %[1]s\n", isolateTable)
	if err := t.nft(ctx, script); err != nil {
		return fmt.Errorf("ending the isolation: %w", err)
	}
	return nil
}

// nft runs an nft script (one transaction: all of it or none) in the switch.
func (t *Topology) nft(ctx context.Context, script string) error {
	_, err := t.exec(ctx, []byte(script), "netns", "exec", t.Namespace(Switch), t.nftPath, "-f", "-")
	return err
}

// ip runs the ip command with args.
func (t *Topology) ip(ctx context.Context, args ...string) ([]byte, error) {
	return t.exec(ctx, nil, args...)
}

// exec runs ip with args (and stdin, if not nil) under the command timeout.
func (t *Topology) exec(ctx context.Context, stdin []byte, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, t.cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, t.ipPath, args...)
	cmd.WaitDelay = time.Second
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", err, ctx.Err())
		}
		return out, &CommandError{Args: cmd.Args, Output: out, Err: err}
	}
	return out, nil
}

// CommandError is a command that failed, with what it printed.
type CommandError struct {
	Args   []string // the command line, program first
	Output []byte   // stdout and stderr, interleaved
	Err    error    // why it failed: exit status, timeout, or a failure to start
}

func (e *CommandError) Error() string {
	out := strings.TrimSpace(string(e.Output))
	if out == "" {
		out = "(no output)"
	}
	return fmt.Sprintf("`%s`: %v: %s", quoteArgs(e.Args), e.Err, out)
}

func (e *CommandError) Unwrap() error { return e.Err }

func quoteArgs(args []string) string {
	quoted := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\n'\"\\$`;&|<>(){}*?!#~") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		quoted[i] = a
	}
	return strings.Join(quoted, " ")
}

// CheckTools reports whether the commands the test bed drives are installed:
// nil if ip (iproute2) and nft (nftables) are found and run, otherwise an
// error that names what is missing and how to install it.
func CheckTools() error {
	_, _, err := findTools()
	return err
}

var (
	toolsOnce          sync.Once
	toolsIP, toolsNFT  string
	toolsErr           error
	toolSearchFallback = []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"}
)

func findTools() (ipPath, nftPath string, err error) {
	toolsOnce.Do(func() {
		var errs []error
		toolsIP, err = findTool("ip", "-V", "iproute2")
		errs = append(errs, err)
		toolsNFT, err = findTool("nft", "-v", "nftables")
		errs = append(errs, err)
		toolsErr = errors.Join(errs...)
	})
	return toolsIP, toolsNFT, toolsErr
}

// findTool looks name up in PATH, then in the sbin directories a non-root
// PATH may lack, and checks that it runs.
func findTool(name, versionFlag, pkg string) (string, error) {
	path, err := exec.LookPath(name)
	if err != nil {
		for _, dir := range toolSearchFallback {
			if _, serr := os.Stat(filepath.Join(dir, name)); serr == nil {
				path, err = filepath.Join(dir, name), nil
				break
			}
		}
	}
	if err != nil {
		return "", fmt.Errorf("%s not found in PATH or %v: install it with `apt-get install %s`", name, toolSearchFallback, pkg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), DefaultCommandTimeout)
	defer cancel()
	if out, err := exec.CommandContext(ctx, path, versionFlag).CombinedOutput(); err != nil {
		return "", fmt.Errorf("%s is installed but `%s %s` failed: %v: %s (reinstall %s)", name, path, versionFlag, err, strings.TrimSpace(string(out)), pkg)
	}
	return path, nil
}

// SendFrameAs sends one Ethernet frame from machine from's link to the
// switch (eth0), with source MAC src, to dst, carrying a local
// experimental ethertype: what a host that still sends as src (an old
// primary as the VM) puts on the wire. The switch learns src on from's
// port, as it would from the real frame.
func (t *Topology) SendFrameAs(from Host, src, dst net.HardwareAddr) error {
	frame := make([]byte, 60)
	copy(frame[0:6], dst)
	copy(frame[6:12], src)
	frame[12], frame[13] = 0x88, 0xb5
	copy(frame[14:], "ftvm-e2e stale frame")
	return t.InNamespace(from, func() error {
		ifi, err := net.InterfaceByName(LinkName)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("packet socket in %s: %w", t.Namespace(from), err)
		}
		defer unix.Close(fd)
		sa := &unix.SockaddrLinklayer{Ifindex: ifi.Index, Halen: 6}
		copy(sa.Addr[:], dst)
		if err := unix.Sendto(fd, frame, 0, sa); err != nil {
			return fmt.Errorf("sending a frame as %s from %s: %w", src, from, err)
		}
		return nil
	})
}
