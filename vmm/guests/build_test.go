package guests

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/ftvm/ftvm/internal/testutil"
)

// buildDir holds everything the tests build (make BUILD=buildDir), so a test
// run never writes into the source tree.
var buildDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ftvm-guests-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "guests: cannot create a build directory:", err)
		os.Exit(1)
	}
	buildDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type buildResult struct {
	once sync.Once
	out  []byte
	err  error
}

// builds keeps one make run per target for the whole test binary.
var builds sync.Map // make target -> *buildResult

// requireToolchain skips when the C toolchain is absent. It is the one
// thing these tests cannot do without: everything else runs anywhere.
func requireToolchain(t testing.TB) {
	t.Helper()
	for _, tool := range []string{"gcc", "make"} {
		if _, err := exec.LookPath(tool); err != nil {
			testutil.SkipMissing(t, fmt.Errorf("%s is not installed, and the guests are C built by make (apt-get install -y gcc make)", tool), testutil.KVM)
		}
	}
}

// build runs make for target (all or hosted) once and returns the build
// directory. It fails the test on a compiler or linker warning: the guests
// are meant to build warning-free with -Wall -Wextra.
func build(t testing.TB, target string) string {
	t.Helper()
	requireToolchain(t)
	v, _ := builds.LoadOrStore(target, &buildResult{})
	r := v.(*buildResult)
	r.once.Do(func() {
		cmd := exec.Command("make", "-j2", "BUILD="+buildDir, target)
		r.out, r.err = cmd.CombinedOutput()
	})
	if r.err != nil {
		t.Fatalf("make %s failed: %v\n%s", target, r.err, r.out)
	}
	if bytes.Contains(r.out, []byte("warning:")) {
		t.Fatalf("make %s printed warnings; the guests must build warning-free:\n%s", target, r.out)
	}
	return buildDir
}

// hostedBinary returns the path of the hosted build of guest.
func hostedBinary(t testing.TB, guest string) string {
	return filepath.Join(build(t, "hosted"), "hosted", guest)
}

// runHosted runs a hosted guest to completion and returns its stdout.
func runHosted(t *testing.T, guest string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(hostedBinary(t, guest), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("running %s %s: %v", guest, strings.Join(args, " "), err)
		}
		code = ee.ExitCode()
	}
	if stderr.Len() > 0 {
		t.Logf("%s stderr: %s", guest, stderr.String())
	}
	return stdout.String(), code
}
