package testutil

import (
	"fmt"
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
