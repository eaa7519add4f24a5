package main

import (
	"flag"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/ftvm/ftvm/tcpfallback"
)

func init() {
	commands.add(&command{
		name:    "certs",
		summary: "write a test CA and host certificates for the transport's mutual TLS",
		run:     runCerts,
	})
}

func runCerts(e *env, args []string) int {
	fs := flag.NewFlagSet("ftvm certs", flag.ContinueOnError)
	dir := fs.String("dir", "", "directory to write ca.pem and <host>.pem/<host>-key.pem into (created if missing): copy it to the hosts")
	caKeyDir := fs.String("ca-key-dir", "", "directory to write the CA's private key (ca-key.pem) into, created 0700 if missing; keep it off the hosts (default: DIR-ca-key, beside DIR)")
	hosts := fs.String("hosts", "primary,secondary", "comma-separated host names, one certificate each")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `usage: ftvm certs --dir DIR [--ca-key-dir KEYDIR] [--hosts a,b]

Creates a fresh test certificate authority and, for every host, a
certificate signed by it that serves as both TLS server and client
certificate (the transport authenticates both ends). Each names the host
and also 127.0.0.1 and ::1, for single-machine labs. Keys are ECDSA P-256,
written with mode 0600. Existing files are never overwritten: delete them to
regenerate. For production, issue certificates from your site's own CA.

DIR gets what the hosts need, and is what you copy to them: ca.pem (the
CA's certificate), <host>.pem and <host>-key.pem. The CA's private key,
which could sign a certificate every host would trust, goes apart, into
KEYDIR/ca-key.pem (default DIR-ca-key/, mode 0700): do not copy it to the
hosts; keep it offline or delete it.

Exit codes: 0 ok, 1 failure, 2 usage error.

flags:
`)
		fs.PrintDefaults()
	}
	if done, code := parseFlags(e, fs, args); done {
		return code
	}
	if *dir == "" {
		fmt.Fprintln(e.stderr, "ftvm certs: --dir is required: say where to write the certificates")
		fs.Usage()
		return exitUsage
	}
	var names []string
	for _, h := range strings.Split(*hosts, ",") {
		if h = strings.TrimSpace(h); h != "" {
			names = append(names, h)
		}
	}
	keyDir := *caKeyDir
	if keyDir == "" {
		keyDir = filepath.Clean(*dir) + "-ca-key"
	}
	if filepath.Clean(keyDir) == filepath.Clean(*dir) {
		fmt.Fprintf(e.stderr, "ftvm certs: --ca-key-dir %s is --dir: the CA's private key must not go with the hosts' certificates; give another directory\n", keyDir)
		return exitUsage
	}
	if err := tcpfallback.WriteTestCertificatesApart(*dir, keyDir, names...); err != nil {
		fmt.Fprintf(e.stderr, "ftvm certs: %v\n", err)
		return exitFailure
	}
	fmt.Fprintf(e.stdout, "wrote a test CA and certificates for %s in %s (copy it to the hosts)\n", strings.Join(names, ", "), *dir)
	fmt.Fprintf(e.stdout, "wrote the CA's private key to %s: keep it off the hosts\n", filepath.Join(keyDir, tcpfallback.CAKeyFileName))
	return exitOK
}
