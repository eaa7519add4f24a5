package main

import (
	"flag"
	"fmt"
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
	dir := fs.String("dir", "", "directory to write ca.pem and <host>.pem/<host>-key.pem into (created if missing)")
	hosts := fs.String("hosts", "primary,secondary", "comma-separated host names, one certificate each")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `usage: ftvm certs --dir DIR [--hosts a,b]

Creates a fresh test certificate authority in DIR and, for every host, a
certificate signed by it that serves as both TLS server and client
certificate (the transport authenticates both ends). Each names the host
and also 127.0.0.1 and ::1, for single-machine labs. Keys are ECDSA P-256,
written with mode 0600. Existing files are never overwritten: delete them to
regenerate. For production, issue certificates from your site's own CA.

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
	if err := tcpfallback.WriteTestCertificates(*dir, names...); err != nil {
		fmt.Fprintf(e.stderr, "ftvm certs: %v\n", err)
		return exitFailure
	}
	fmt.Fprintf(e.stdout, "wrote a test CA and certificates for %s in %s\n", strings.Join(names, ", "), *dir)
	return exitOK
}
