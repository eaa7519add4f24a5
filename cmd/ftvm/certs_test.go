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

// TestCertsKeepsCAKeyApart: the directory ftvm certs says to copy to the
// hosts holds no CA private key; the key is in its own directory, 0700,
// and ftvm certs says where.
func TestCertsKeepsCAKeyApart(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "certs")
	code, out, errs := runFtvm("certs", "--dir", dir, "--hosts", "a,b")
	if code != exitOK {
		t.Fatalf("ftvm certs: exit %d, stderr %q", code, errs)
	}
	if _, err := os.Stat(filepath.Join(dir, tcpfallback.CAKeyFileName)); err == nil {
		t.Fatalf("the CA's private key is in %s, the directory the hosts get", dir)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		b, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		if strings.Contains(string(b), "PRIVATE KEY") && e.Name() != "a-key.pem" && e.Name() != "b-key.pem" {
			t.Fatalf("%s in the hosts' directory holds a private key", e.Name())
		}
	}
	keyDir := dir + "-ca-key"
	st, err := os.Stat(filepath.Join(keyDir, tcpfallback.CAKeyFileName))
	if err != nil {
		t.Fatalf("the CA's private key is not in %s: %v", keyDir, err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("the CA key's mode is %v, want 0600", st.Mode().Perm())
	}
	if dst, _ := os.Stat(keyDir); dst == nil || dst.Mode().Perm() != 0o700 {
		t.Fatalf("the CA key's directory: %v, want mode 0700", dst)
	}
	if !strings.Contains(out, filepath.Join(keyDir, tcpfallback.CAKeyFileName)) {
		t.Fatalf("ftvm certs output %q does not say where the CA key went", out)
	}
	other := filepath.Join(base, "keys")
	if code, _, errs := runFtvm("certs", "--dir", filepath.Join(base, "c2"), "--ca-key-dir", other, "--hosts", "a"); code != exitOK {
		t.Fatalf("ftvm certs --ca-key-dir: exit %d, stderr %q", code, errs)
	}
	if _, err := os.Stat(filepath.Join(other, tcpfallback.CAKeyFileName)); err != nil {
		t.Fatalf("--ca-key-dir: %v", err)
	}
	if code, _, errs := runFtvm("certs", "--dir", dir+"3", "--ca-key-dir", dir+"3"); code != exitUsage || !strings.Contains(errs, "must not go with") {
		t.Fatalf("--ca-key-dir equal to --dir: exit %d, stderr %q", code, errs)
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
