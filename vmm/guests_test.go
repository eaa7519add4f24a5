package vmm

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/ftvm/ftvm/internal/testutil"
)

// Guest ELF files for the KVM tests come from FTVM_GUEST_DIR when it is set
// (the kvmbox test bed has no compiler), else from `make -C guests` when
// gcc and the guests' Makefile are here; otherwise the test skips and says
// which of them is missing.
const guestDirEnv = "FTVM_GUEST_DIR"

var (
	guestBuildOnce sync.Once
	guestBuildDir  string
	guestBuildErr  error
)

func guestELF(t testing.TB, name string) []byte {
	t.Helper()
	// Only KVM tests run guests: where there is no KVM, skip before
	// building anything.
	requireKVM(t)
	dir := os.Getenv(guestDirEnv)
	if dir == "" {
		if _, err := os.Stat("guests/Makefile"); err != nil {
			testutil.SkipMissing(t, fmt.Errorf("no guest %s: %s is unset and vmm/guests/Makefile does not exist", name, guestDirEnv), testutil.KVM)
		}
		if _, err := exec.LookPath("gcc"); err != nil {
			testutil.SkipMissing(t, fmt.Errorf("no guest %s: %s is unset and gcc is missing (apt-get install gcc)", name, guestDirEnv), testutil.KVM)
		}
		guestBuildOnce.Do(func() {
			out, err := exec.Command("make", "-C", "guests").CombinedOutput()
			if err != nil {
				guestBuildErr = fmt.Errorf("make -C vmm/guests: %v\n%s", err, out)
			}
			guestBuildDir = filepath.Join("guests", "build")
		})
		if guestBuildErr != nil {
			t.Fatal(guestBuildErr)
		}
		dir = guestBuildDir
	}
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatalf("guest %s: %v (%s=%q)", name, err, guestDirEnv, os.Getenv(guestDirEnv))
	}
	return b
}

// capturedOutput is one output as the guest made it.
type capturedOutput struct {
	Index  uint64
	Device Device
	Data   []byte
}

func (c capturedOutput) String() string {
	return fmt.Sprintf("exit %d %s %q", c.Index, c.Device, c.Data)
}

// capture records every output (index and bytes) before passing the exit
// on to the hook under test.
type capture struct {
	inner ExitHook
	mu    sync.Mutex
	outs  []capturedOutput
}

func (c *capture) OnExit(e *Exit) (Result, error) {
	if e.Dir == DirOutput {
		c.mu.Lock()
		c.outs = append(c.outs, capturedOutput{e.Index, e.Device, bytes.Clone(e.Data)})
		c.mu.Unlock()
	}
	return c.inner.OnExit(e)
}

func (c *capture) outputs() []capturedOutput {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]capturedOutput(nil), c.outs...)
}

func sameOutputs(t *testing.T, a, b []capturedOutput) {
	t.Helper()
	if len(a) != len(b) {
		t.Fatalf("%d outputs live, %d in replay", len(a), len(b))
	}
	for i := range a {
		if a[i].Index != b[i].Index || a[i].Device != b[i].Device || !bytes.Equal(a[i].Data, b[i].Data) {
			t.Fatalf("output %d differs:\nlive   %v\nreplay %v", i, a[i], b[i])
		}
	}
}
