package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The crash helper is this test binary run again with crashPrefixEnv set:
// it brings a test bed up, cuts its link, marks each namespace with a device
// named leftoverMark, leaves a process in host b, and exits without Down, as
// a run that crashed would.
const (
	crashPrefixEnv = "FTVM_E2E_CRASH_PREFIX"
	crashLogDirEnv = "FTVM_E2E_CRASH_LOGDIR"
	crashExitCode  = 3
	leftoverMark   = "leftover0"
)

func TestMain(m *testing.M) {
	if prefix := os.Getenv(crashPrefixEnv); prefix != "" {
		crashHelper(prefix, os.Getenv(crashLogDirEnv))
	}
	os.Exit(m.Run())
}

func crashHelper(prefix, logDir string) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	topo, err := Up(ctx, prefix, WithLogDir(logDir))
	if err == nil {
		err = topo.CutLink(ctx)
	}
	for _, h := range hosts {
		if err == nil {
			_, err = topo.ip(ctx, "-n", topo.Namespace(h), "link", "add", leftoverMark, "type", "bridge")
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "crash helper:", err)
		os.Exit(1)
	}
	leftover := topo.Command(context.Background(), HostB, "sleep", "300")
	if err := leftover.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "crash helper:", err)
		os.Exit(1)
	}
	fmt.Printf("leftover-pid %d\n", leftover.Process.Pid)
	os.Exit(crashExitCode) // no Down: the crash
}

// TestUpAfterCrash proves Up of a prefix whose run died without Down
// replaces what that run left: its namespaces (with the cut link), its lock,
// and the process it left inside.
func TestUpAfterCrash(t *testing.T) {
	requireBed(t)
	prefix := testPrefix("crash")
	ctx := testCtx(t, 30*time.Second)

	helper := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	helper.Env = append(os.Environ(), crashPrefixEnv+"="+prefix, crashLogDirEnv+"="+t.TempDir())
	var stderr bytes.Buffer
	helper.Stderr = &stderr
	out, err := helper.Output()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != crashExitCode {
		t.Fatalf("crash helper: %v, want exit status %d\nstdout: %s\nstderr: %s", err, crashExitCode, out, stderr.Bytes())
	}
	pid := 0
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == "leftover-pid" {
			pid, _ = strconv.Atoi(f[1])
		}
	}
	if pid <= 0 {
		t.Fatalf("crash helper printed no leftover pid: %q", out)
	}
	t.Cleanup(func() { killIfSleep(pid) }) // should Up fail to
	if !alive(pid) {
		t.Fatalf("the crashed run's process %d is not running before Up", pid)
	}

	// What the crash left.
	names := make([]string, len(hosts))
	for i, h := range hosts {
		names[i] = prefix + "-" + string(h)
		if !slices.Contains(netnsList(t), names[i]) {
			t.Fatalf("the crashed run left no namespace %s", names[i])
		}
		if _, ok := links(t, names[i])[leftoverMark]; !ok {
			t.Fatalf("the crashed run's namespace %s lacks its mark %s", names[i], leftoverMark)
		}
	}
	if _, err := os.Stat(lockPath(prefix)); err != nil {
		t.Fatalf("the crashed run left no lock file: %v", err)
	}

	topo := upBed(t, "crash")

	deadline := time.Now().Add(5 * time.Second)
	for alive(pid) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if alive(pid) {
		t.Errorf("the crashed run's process %d in %s still runs after Up", pid, names[2])
	}
	for _, ns := range names {
		if _, ok := links(t, ns)[leftoverMark]; ok {
			t.Errorf("namespace %s is the crashed run's (it has %s), not a new one", ns, leftoverMark)
		}
	}
	if err := topo.Ping(ctx, HostA, HostAddr(HostB)); err != nil {
		t.Errorf("after Up over the crashed run (whose link was cut): %v", err)
	}
}

// TestUpAfterPartialLeftovers proves Up copes with a run that died half-way
// through building: some namespaces, some devices, no lock file.
func TestUpAfterPartialLeftovers(t *testing.T) {
	requireBed(t)
	prefix := testPrefix("partial")
	ctx := testCtx(t, 20*time.Second)
	sw, a := prefix+"-sw", prefix+"-a"
	for _, args := range [][]string{
		{"netns", "add", sw},
		{"netns", "add", a},
		{"-n", a, "link", "add", LinkName, "type", "veth", "peer", "name", "a", "netns", sw},
		{"-n", a, "link", "add", BridgeName, "type", "bridge"},
	} {
		if out, err := exec.CommandContext(ctx, ipPath(t), args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	t.Cleanup(func() {
		for _, ns := range []string{sw, a} {
			_ = exec.Command(ipPath(t), "netns", "delete", ns).Run() // in case Up fails
		}
	})
	topo := upBed(t, "partial")
	if err := topo.Ping(ctx, Client, HostAddr(HostA)); err != nil {
		t.Errorf("after Up over partial leftovers: %v", err)
	}
}

// alive reports whether pid runs (a zombie waiting to be reaped does not:
// the init of a container may never reap it).
func alive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// "pid (comm) S ...": the state follows the last ')'.
	i := bytes.LastIndexByte(stat, ')')
	return i < 0 || i+2 >= len(stat) || (stat[i+2] != 'Z' && stat[i+2] != 'X')
}

// killIfSleep kills pid if it is still the sleep the crash helper left.
func killIfSleep(pid int) {
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err == nil && strings.TrimSpace(string(comm)) == "sleep" && alive(pid) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}
