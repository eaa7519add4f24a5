package tcpfallback

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"strings"
)

// peerIdentity is who an authenticated peer is: under TLS what its
// verified certificate names, under PSK the name its hello carries (bound
// into its proof of the key). Two connections come from the same peer when
// their identities are equal; a listener lets a new connection replace a
// lane's live one only then.
type peerIdentity struct {
	cert *x509.Certificate // TLS only
	name string            // PSK only
}

// key is what identities are compared by: every name a certificate carries
// (so a renewed certificate for the same host is the same peer), or the
// PSK name.
func (p peerIdentity) key() string {
	if p.cert == nil {
		return "psk:" + p.name
	}
	return "cert:" + strings.Join(certNames(p.cert), ",")
}

// String is what the peer presented, for messages and logs.
func (p peerIdentity) String() string {
	if p.cert == nil {
		if p.name == "" {
			return "no name (its Config.Name, the daemon's --tls-name, is empty)"
		}
		return fmt.Sprintf("%q", p.name)
	}
	names := certNames(p.cert)
	if len(names) == 0 {
		return "no name (its certificate has neither a common name nor a subject alternative name)"
	}
	if len(names) == 1 {
		return fmt.Sprintf("%q", names[0])
	}
	return fmt.Sprintf("%q (also %s)", names[0], strings.Join(names[1:], ", "))
}

// certNames lists the names a certificate carries: its subject's common
// name, then its DNS and IP subject alternative names, without repeats.
func certNames(c *x509.Certificate) []string {
	var out []string
	seen := map[string]bool{}
	add := func(n string) {
		if n != "" && !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	add(c.Subject.CommonName)
	for _, n := range c.DNSNames {
		add(n)
	}
	for _, ip := range c.IPAddresses {
		add(ip.String())
	}
	return out
}

// identityOf is the identity of the peer on conn: its TLS certificate if
// conn is TLS (verified by the handshake against the CA), else the PSK
// name from its hello.
func identityOf(conn any, helloName string) peerIdentity {
	if tc, ok := conn.(*tls.Conn); ok {
		if certs := tc.ConnectionState().PeerCertificates; len(certs) > 0 {
			return peerIdentity{cert: certs[0]}
		}
	}
	return peerIdentity{name: helloName}
}

// matches reports whether the peer is one of names: under TLS its
// certificate is valid for one of them (x509's host name rules: DNS names,
// wildcards, IP addresses); under PSK its name is one of them.
func (p peerIdentity) matches(names []string) bool {
	for _, n := range names {
		if p.cert != nil {
			if p.cert.VerifyHostname(n) == nil {
				return true
			}
		} else if p.name == n {
			return true
		}
	}
	return false
}

// checkAllowed returns why the peer is not acceptable under
// Config.PeerNames (empty allows any peer that authenticated), or "".
func (c *Config) checkAllowed(p peerIdentity) string {
	if len(c.PeerNames) == 0 || p.matches(c.PeerNames) {
		return ""
	}
	what := "its certificate names"
	if p.cert == nil {
		what = "its pre-shared-key name is"
	}
	return fmt.Sprintf("peer not accepted: %s %s, and this host accepts only %s (Config.PeerNames; the daemon's --allow-peers or --peer-name)",
		what, p, strings.Join(c.PeerNames, ", "))
}
