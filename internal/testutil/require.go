package testutil

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Feature names one capability of the machine that some tests need.
type Feature string

// The features a test can require. The string is the name used in
// FTVM_REQUIRE.
const (
	KVM   Feature = "kvm"   // /dev/kvm opens and answers KVM_GET_API_VERSION = 12
	Root  Feature = "root"  // effective uid 0
	BPF   Feature = "bpf"   // the bpf(2) syscall creates a map
	Netns Feature = "netns" // unshare(CLONE_NEWNET) succeeds
	TUN   Feature = "tun"   // /dev/net/tun opens
	RDMA  Feature = "rdma"  // at least one device in /sys/class/infiniband
)

// AllFeatures lists every feature, in the order reports print them.
var AllFeatures = []Feature{KVM, Root, BPF, Netns, TUN, RDMA}

// RequireEnv is the environment variable that turns skips into failures.
const RequireEnv = "FTVM_REQUIRE"

var (
	probeOnce  sync.Map // Feature -> *probeResult
	probeFuncs = map[Feature]func() error{
		KVM:   probeKVM,
		Root:  probeRoot,
		BPF:   probeBPF,
		Netns: probeNetns,
		TUN:   probeTUN,
		RDMA:  probeRDMA,
	}
)

type probeResult struct {
	once sync.Once
	err  error
}

// Check reports whether the feature is present: nil if it is, otherwise an
// error that says what was missing and what to do about it. Results are
// probed once per process.
func Check(f Feature) error {
	probe, ok := probeFuncs[f]
	if !ok {
		return fmt.Errorf("unknown feature %q (known: %v)", f, AllFeatures)
	}
	v, _ := probeOnce.LoadOrStore(f, &probeResult{})
	r := v.(*probeResult)
	r.once.Do(func() { r.err = probe() })
	return r.err
}

// Required reports whether FTVM_REQUIRE names the feature (or "all").
func Required(f Feature) bool {
	for _, name := range strings.Split(os.Getenv(RequireEnv), ",") {
		name = strings.TrimSpace(name)
		if name == "all" || Feature(name) == f {
			return true
		}
	}
	return false
}

// TB is the part of testing.TB that Require uses; tests pass their *testing.T
// or *testing.B.
type TB interface {
	Helper()
	Skipf(format string, args ...any)
	Fatalf(format string, args ...any)
}

var _ TB = (testing.TB)(nil)

// Require skips the test unless every feature is present. Where FTVM_REQUIRE
// names a missing feature, the test fails instead of skipping.
func Require(t TB, features ...Feature) {
	t.Helper()
	for _, f := range features {
		err := Check(f)
		if err == nil {
			continue
		}
		if Required(f) {
			t.Fatalf("feature %s is required by %s=%s but missing: %v", f, RequireEnv, os.Getenv(RequireEnv), err)
			return
		}
		t.Skipf("skipping: feature %s is missing: %v", f, err)
		return
	}
}

// Report returns one line per feature saying whether it is present, for
// tools that print what the machine can do.
func Report() []string {
	lines := make([]string, 0, len(AllFeatures))
	for _, f := range AllFeatures {
		if err := Check(f); err != nil {
			lines = append(lines, fmt.Sprintf("%-6s missing: %v", f, err))
		} else {
			lines = append(lines, fmt.Sprintf("%-6s present", f))
		}
	}
	return lines
}

func probeRoot() error {
	if uid := os.Geteuid(); uid != 0 {
		return fmt.Errorf("effective uid is %d, not 0: run the tests as root (sudo make test)", uid)
	}
	return nil
}

// kvmGetAPIVersion is _IO(KVMIO, 0x00); the stable API answers 12.
const kvmGetAPIVersion = 0xAE00

func probeKVM() error {
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return errors.New("/dev/kvm does not exist: the kernel has no KVM for this CPU (no VT-x/AMD-V, or a nested hypervisor that does not expose it)")
		}
		return fmt.Errorf("open /dev/kvm: %w (are you root or in the kvm group?)", err)
	}
	defer unix.Close(fd)
	v, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), kvmGetAPIVersion, 0)
	if errno != 0 {
		return fmt.Errorf("KVM_GET_API_VERSION: %w", errno)
	}
	if v != 12 {
		return fmt.Errorf("KVM_GET_API_VERSION answered %d, want 12", v)
	}
	return nil
}

// bpfMapCreateAttr is the prefix of union bpf_attr used by BPF_MAP_CREATE.
type bpfMapCreateAttr struct {
	mapType    uint32
	keySize    uint32
	valueSize  uint32
	maxEntries uint32
}

func probeBPF() error {
	const bpfMapCreate, bpfMapTypeArray = 0, 2
	attr := bpfMapCreateAttr{mapType: bpfMapTypeArray, keySize: 4, valueSize: 8, maxEntries: 1}
	fd, _, errno := unix.Syscall(unix.SYS_BPF, bpfMapCreate, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	if errno != 0 {
		return fmt.Errorf("bpf(BPF_MAP_CREATE) failed: %w (needs root or CAP_BPF, and a kernel with CONFIG_BPF_SYSCALL)", errno)
	}
	unix.Close(int(fd))
	return nil
}

func probeNetns() error {
	errc := make(chan error, 1)
	go func() {
		// The thread that unshares is left locked, so the runtime throws it
		// away when this goroutine ends instead of reusing a thread that
		// now lives in another network namespace.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare(CLONE_NEWNET): %w (needs root or CAP_SYS_ADMIN, and CONFIG_NET_NS)", err)
			return
		}
		errc <- nil
	}()
	return <-errc
}

func probeTUN() error {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open /dev/net/tun: %w (needs root or CAP_NET_ADMIN, and CONFIG_TUN)", err)
	}
	unix.Close(fd)
	return nil
}

func probeRDMA() error {
	entries, err := os.ReadDir("/sys/class/infiniband")
	if err != nil || len(entries) == 0 {
		return errors.New("no RDMA device in /sys/class/infiniband (no RDMA NIC, and no soft-RoCE: CONFIG_INFINIBAND/CONFIG_RDMA_RXE)")
	}
	return nil
}

// SkipMissing skips the test because something it needs besides a feature of
// the machine is absent (a guest not built, a tool not installed), with err
// saying what and what to do. The test belongs to what the features in
// neededFor promise, so where FTVM_REQUIRE names any of them (or "all") it
// fails instead: a run that requires KVM must not pass because the guests
// were never built.
func SkipMissing(t TB, err error, neededFor ...Feature) {
	t.Helper()
	for _, f := range neededFor {
		if Required(f) {
			t.Fatalf("%v; %s=%s requires %s, which needs it", err, RequireEnv, os.Getenv(RequireEnv), f)
			return
		}
	}
	t.Skipf("skipping: %v", err)
}

// Skipper is the part of testing.TB that SkipShort and SkipChosen use.
type Skipper interface {
	Helper()
	Skip(args ...any)
}

// SkipShort skips the test under go test -short, which is a choice of the
// one running the tests and never the absence of a feature; why says what
// the test costs.
func SkipShort(t Skipper, why string) {
	t.Helper()
	if testing.Short() {
		SkipChosen(t, "skipped under -short: "+why)
	}
}

// SkipChosen skips for a choice the one running the tests made (-short, a
// -run or -bench pattern that left out what this part needs), never for a
// missing feature, so FTVM_REQUIRE does not turn it into a failure.
func SkipChosen(t Skipper, why string) {
	t.Helper()
	t.Skip(why)
}
