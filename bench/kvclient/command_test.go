package kvclient

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/bench/linearize"
)

func TestCommandRunsChecksAndWritesTheHistory(t *testing.T) {
	f := startFakeKV(t)
	path := filepath.Join(t.TempDir(), "history.jsonl")
	var stdout, stderr bytes.Buffer
	code := Command(context.Background(), "kvload", []string{"-addr", f.addr(), "-rate", "1000", "-duration", "100ms",
		"-attempt-timeout", "30ms", "-attempts", "3", "-history", path}, &stdout, &stderr)
	if code != ExitOK {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, &stdout, &stderr)
	}
	if !strings.Contains(stdout.String(), "linearizable: yes") || !strings.Contains(stderr.String(), "served=") {
		t.Fatalf("stdout:\n%s\nstderr:\n%s", &stdout, &stderr)
	}
	file, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	h, err := linearize.ReadJSONL(file)
	if err != nil || len(h) == 0 {
		t.Fatalf("history file: %d operations, %v", len(h), err)
	}
	if err := linearize.Check(h); err != nil {
		t.Fatalf("history read back is not linearizable: %v", err)
	}
}

func TestCommandUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{},                                // no -addr
		{"-addr", "127.0.0.1:1", "extra"}, // stray argument
		{"-addr", "127.0.0.1:1", "-mix", "1:2"},
		{"-addr", "127.0.0.1:1", "-mix", "0:0:0"},
		{"-addr", "127.0.0.1:1", "-concurrency", "-3"},
		{"-no-such-flag"},
	} {
		var stdout, stderr bytes.Buffer
		if code := Command(context.Background(), "kvload", args, &stdout, &stderr); code != ExitUsage || stderr.Len() == 0 {
			t.Errorf("%q: exit %d, stderr %q; want %d and a message", args, code, &stderr, ExitUsage)
		}
	}
}

func TestCommandFailsOnANonLinearizableRun(t *testing.T) {
	f := startFakeKV(t)
	f.takeSnapshot() // restored during the outage: every write before it is lost
	down := outage(f, 150*time.Millisecond, 30*time.Millisecond, f.restoreSnapshot)
	var stdout, stderr bytes.Buffer
	code := Command(context.Background(), "kvload", []string{"-addr", f.addr(), "-rate", "1000", "-duration", "300ms",
		"-attempt-timeout", "20ms", "-attempts", "20", "-keys", "2", "-counters", "2", "-quiet"}, &stdout, &stderr)
	<-down
	if code != ExitNotLinearizable || !strings.Contains(stdout.String(), "NOT LINEARIZABLE") {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, &stdout, &stderr)
	}
}

// The progress line is redrawn in place (ESC[K) only on a terminal; to a
// file or a pipe it is plain lines (issue 15).
func TestCommandProgressHasNoEscapesWhenNotATerminal(t *testing.T) {
	f := startFakeKV(t)
	var stdout, stderr bytes.Buffer
	code := Command(context.Background(), "kvload", []string{"-addr", f.addr(), "-rate", "1000", "-duration", "100ms",
		"-attempt-timeout", "30ms", "-attempts", "3"}, &stdout, &stderr)
	if code != ExitOK {
		t.Fatalf("exit %d\nstderr:\n%s", code, &stderr)
	}
	if s := stderr.String(); strings.ContainsAny(s, "\x1b\r") || !strings.Contains(s, "served=") || !strings.HasSuffix(s, "\n") {
		t.Fatalf("progress to a buffer: %q; want plain lines with the totals and no escape codes", s)
	}
}
