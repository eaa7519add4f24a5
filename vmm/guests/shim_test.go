package guests

import (
	"bytes"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestShimRefusesABIViolations proves the hosted shim is a checker: a guest
// that breaks the device ABI stops with exit code 125 and a message naming
// the rule, as it would stop a VM. Hosted tests of the real guests passing
// therefore means they kept to the ABI.
func TestShimRefusesABIViolations(t *testing.T) {
	requireToolchain(t)
	bin := filepath.Join(t.TempDir(), "abibug")
	srcs := []string{"testdata/abibug.c", "hosted/shim.c", "rt/start.c", "rt/string.c", "rt/print.c", "rt/cmdline.c", "rt/dev.c"}
	args := append([]string{"-O1", "-Wall", "-Wextra", "-DFTVM_HOSTED", "-fno-builtin", "-Iinclude", "-Irt", "-o", bin}, srcs...)
	if out, err := exec.Command("gcc", args...).CombinedOutput(); err != nil {
		t.Fatalf("building testdata/abibug.c: %v\n%s", err, out)
	}
	disk := newDisk(t, 8)
	cases := []struct {
		name string
		code int
		says string
	}{
		{"console_len", 125, "console write over 4096 bytes"},
		{"block_len", 125, "block length must be a multiple of 512"},
		{"flags", 125, "flags must be 0"},
		{"port", 125, "no device at this port"},
		{"op", 125, "unknown nic op"},
		{"block_range", 0, ""},
		{"none", 0, ""},
	}
	for _, c := range cases {
		cmd := exec.Command(bin, "-block", disk, "--", "case="+c.name)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != c.code || !strings.Contains(stderr.String(), c.says) {
			t.Errorf("case=%s: exit %d, stderr %q; want exit %d and %q", c.name, code, stderr.String(), c.code, c.says)
		}
	}
}
