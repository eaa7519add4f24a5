package testutil

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// fakeTB records what Require did instead of acting on it.
type fakeTB struct {
	skipped, failed bool
	msg             string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Skipf(format string, args ...any) {
	f.skipped, f.msg = true, fmt.Sprintf(format, args...)
}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed, f.msg = true, fmt.Sprintf(format, args...)
}

func TestRequiredParsesList(t *testing.T) {
	t.Setenv(RequireEnv, "root, bpf")
	if !Required(Root) || !Required(BPF) {
		t.Fatalf("root and bpf should be required by %q", "root, bpf")
	}
	if Required(KVM) {
		t.Fatalf("kvm should not be required by %q", "root, bpf")
	}
	t.Setenv(RequireEnv, "all")
	for _, f := range AllFeatures {
		if !Required(f) {
			t.Fatalf("%s should be required by all", f)
		}
	}
}

func TestRequireSkipsOrFailsOnMissingFeature(t *testing.T) {
	// Plant a missing feature by replacing its probe.
	const fake Feature = "fake"
	probeFuncs[fake] = func() error { return fmt.Errorf("planted absence") }
	t.Cleanup(func() { delete(probeFuncs, fake); probeOnce.Delete(fake) })

	t.Setenv(RequireEnv, "")
	var tb fakeTB
	Require(&tb, fake)
	if !tb.skipped || tb.failed {
		t.Fatalf("missing, not required: want skip, got skipped=%v failed=%v", tb.skipped, tb.failed)
	}
	if want := "planted absence"; !contains(tb.msg, want) || !contains(tb.msg, string(fake)) {
		t.Fatalf("skip message %q should name the feature and the reason", tb.msg)
	}

	t.Setenv(RequireEnv, "fake")
	tb = fakeTB{}
	Require(&tb, fake)
	if !tb.failed || tb.skipped {
		t.Fatalf("missing and required: want failure, got skipped=%v failed=%v", tb.skipped, tb.failed)
	}
}

func TestRequirePassesPresentFeature(t *testing.T) {
	const fake Feature = "present"
	probeFuncs[fake] = func() error { return nil }
	t.Cleanup(func() { delete(probeFuncs, fake); probeOnce.Delete(fake) })
	var tb fakeTB
	Require(&tb, fake)
	if tb.skipped || tb.failed {
		t.Fatalf("present feature: got skipped=%v failed=%v (%s)", tb.skipped, tb.failed, tb.msg)
	}
}

func TestUnknownFeature(t *testing.T) {
	if err := Check("nonsense"); err == nil {
		t.Fatal("Check of an unknown feature should fail")
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

// TestReportProbesEveryFeature runs the real probes; it asserts only that
// each feature got a verdict, since the machine decides which.
func TestReportProbesEveryFeature(t *testing.T) {
	lines := Report()
	if len(lines) != len(AllFeatures) {
		t.Fatalf("Report gave %d lines for %d features", len(lines), len(AllFeatures))
	}
	for _, l := range lines {
		t.Log(l)
	}
}

func TestSkipMissingSkipsOrFails(t *testing.T) {
	missing := fmt.Errorf("guest planted.elf not built: run make guests")
	t.Setenv(RequireEnv, "")
	var tb fakeTB
	SkipMissing(&tb, missing, KVM)
	if !tb.skipped || tb.failed || !contains(tb.msg, "planted.elf") {
		t.Fatalf("not required: want a skip naming the reason, got skipped=%v failed=%v %q", tb.skipped, tb.failed, tb.msg)
	}
	t.Setenv(RequireEnv, "root,kvm")
	tb = fakeTB{}
	SkipMissing(&tb, missing, Netns, KVM)
	if !tb.failed || tb.skipped || !contains(tb.msg, "planted.elf") || !contains(tb.msg, "kvm") {
		t.Fatalf("kvm required: want a failure naming the reason and kvm, got skipped=%v failed=%v %q", tb.skipped, tb.failed, tb.msg)
	}
}

// TestNoSkipOutsideTestutil reads every test file of the module: a test
// that calls Skip itself escapes FTVM_REQUIRE, so a regression that makes
// it skip (a guest no longer built, a tool renamed) would pass a run that
// requires the feature. Skips go through Require, SkipMissing or SkipShort.
func TestNoSkipOutsideTestutil(t *testing.T) {
	root := filepath.Join("..", "..")
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root not found from internal/testutil: %v", err)
	}
	skip := regexp.MustCompile(`\.Skip(f|Now)?\(`)
	var found []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); name == ".git" || name == "testutil" || name == "build" {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for i, line := range strings.Split(string(b), "\n") {
			if skip.MatchString(line) {
				found = append(found, fmt.Sprintf("%s:%d: %s", path, i+1, strings.TrimSpace(line)))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(found) > 0 {
		t.Fatalf("tests skip outside internal/testutil, where FTVM_REQUIRE cannot turn the skip into a failure:\n%s", strings.Join(found, "\n"))
	}
}
