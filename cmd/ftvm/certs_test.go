package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ftvm/ftvm/tcpfallback"
)

func TestCertsWritesLoadableCertificates(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	code, out, errs := runFtvm("certs", "--dir", dir, "--hosts", "alpha, beta")
	if code != exitOK {
		t.Fatalf("ftvm certs: exit %d, stderr %q", code, errs)
	}
	if !strings.Contains(out, "alpha, beta") {
		t.Fatalf("ftvm certs output %q should name the hosts", out)
	}
	for _, h := range []string{"alpha", "beta"} {
		if _, err := tcpfallback.LoadTLSConfig(dir, h); err != nil {
			t.Fatalf("certificate for %s does not load: %v", h, err)
		}
	}
	// A second run must refuse to overwrite what is there.
	before, _ := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if code, _, _ := runFtvm("certs", "--dir", dir, "--hosts", "alpha"); code == exitOK {
		t.Fatal("ftvm certs overwrote existing certificates")
	}
	after, _ := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if string(before) != string(after) {
		t.Fatal("ca.pem changed on a refused second run")
	}
}

func TestCertsUsageErrors(t *testing.T) {
	if code, _, errs := runFtvm("certs"); code != exitUsage || !strings.Contains(errs, "--dir is required") {
		t.Fatalf("ftvm certs without --dir: exit %d, stderr %q", code, errs)
	}
	if code, _, errs := runFtvm("bench", "transport", "--help"); code != exitOK || !strings.Contains(errs, "usage: ftvm bench transport") {
		t.Fatalf("ftvm bench transport --help: exit %d, stderr %q", code, errs)
	}
}

func TestKVLoadIsWired(t *testing.T) {
	code, out, errs := runFtvm("kvload", "-help")
	if code != exitOK || !strings.Contains(out+errs, "ftvm kvload") {
		t.Fatalf("ftvm kvload -help: exit %d, stdout %q, stderr %q", code, out, errs)
	}
}
