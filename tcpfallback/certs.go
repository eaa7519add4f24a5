package tcpfallback

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// testCertValidity is how long generated test certificates stay valid.
const testCertValidity = 365 * 24 * time.Hour

// File names WriteTestCertificates uses inside its directory.
const (
	CAFileName = "ca.pem"
	// CAKeyFileName is the CA's private key. Whoever holds it can make
	// certificates every host trusts: WriteTestCertificatesApart writes it
	// apart from the directory the hosts get.
	CAKeyFileName = "ca-key.pem"
	caKeyName     = CAKeyFileName
)

// CertFileName and KeyFileName name the certificate and key of one host
// inside a directory written by WriteTestCertificates.
func CertFileName(host string) string { return host + ".pem" }
func KeyFileName(host string) string  { return host + "-key.pem" }

// WriteTestCertificates creates a fresh test CA in dir and, for each host
// name, a certificate signed by it that serves both as TLS server and TLS
// client certificate (the transport authenticates both ends). Each host
// certificate names the host as a DNS name and, so that tests and single-box
// demos work, 127.0.0.1 and ::1. Keys are ECDSA P-256, written 0600.
//
// It is for tests and labs; production hosts should take certificates from
// the site's own CA. Existing files are not overwritten: delete them to
// regenerate.
//
//	err := tcpfallback.WriteTestCertificates("/etc/ftvm/certs", "host-a", "host-b")
//	tlsA, err := tcpfallback.LoadTLSConfig("/etc/ftvm/certs", "host-a")
func WriteTestCertificates(dir string, hosts ...string) error {
	return WriteTestCertificatesApart(dir, dir, hosts...)
}

// WriteTestCertificatesApart is WriteTestCertificates with the CA's
// private key written into caKeyDir (created 0700 if missing) instead of
// dir: dir then holds only what the hosts need (ca.pem and the host
// certificates and keys) and can be copied to them, while the CA key,
// which could sign a certificate any host would trust, stays where it was
// made.
func WriteTestCertificatesApart(dir, caKeyDir string, hosts ...string) error {
	if len(hosts) == 0 {
		return errors.New("tcpfallback: WriteTestCertificates needs at least one host name")
	}
	for _, h := range hosts {
		if h == "" || h == "ca" || filepath.Base(h) != h {
			return fmt.Errorf("tcpfallback: host name %q is not usable as a file name; use a plain name such as host-a", h)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("tcpfallback: creating certificate directory: %w", err)
	}
	if err := os.MkdirAll(caKeyDir, 0o700); err != nil {
		return fmt.Errorf("tcpfallback: creating the CA key's directory: %w", err)
	}
	paths := []string{filepath.Join(dir, CAFileName), filepath.Join(caKeyDir, caKeyName)}
	for _, h := range hosts {
		paths = append(paths, filepath.Join(dir, CertFileName(h)), filepath.Join(dir, KeyFileName(h)))
	}
	for _, p := range paths {
		if _, err := os.Stat(p); err == nil {
			return fmt.Errorf("tcpfallback: %s already exists; remove the old certificates first or pick another directory", p)
		}
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "ftvm test CA", Organization: []string{"ftvm"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(testCertValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}
	if err := writePEM(dir, CAFileName, "CERTIFICATE", caDER, 0o644); err != nil {
		return err
	}
	if err := writeKey(caKeyDir, caKeyName, caKey); err != nil {
		return err
	}
	for _, h := range hosts {
		if err := writeHostCertificate(dir, h, caCert, caKey, now); err != nil {
			return err
		}
	}
	return nil
}

// AddTestCertificate signs a certificate for one more host with the test CA
// that WriteTestCertificates left in dir (ca.pem and its key), as that
// function would have. It is for tests and labs, e.g. a certificate from
// the right CA that names a host the pair does not expect.
func AddTestCertificate(dir, host string) error { return AddTestCertificateApart(dir, dir, host) }

// AddTestCertificateApart is AddTestCertificate for a CA whose private key
// WriteTestCertificatesApart (or `ftvm certs`) put in caKeyDir.
func AddTestCertificateApart(dir, caKeyDir, host string) error {
	if host == "" || host == "ca" || filepath.Base(host) != host {
		return fmt.Errorf("tcpfallback: host name %q is not usable as a file name; use a plain name such as host-c", host)
	}
	for _, n := range []string{CertFileName(host), KeyFileName(host)} {
		if _, err := os.Stat(filepath.Join(dir, n)); err == nil {
			return fmt.Errorf("tcpfallback: %s already exists; remove it first", filepath.Join(dir, n))
		}
	}
	ca, err := tls.LoadX509KeyPair(filepath.Join(dir, CAFileName), filepath.Join(caKeyDir, caKeyName))
	if err != nil {
		return fmt.Errorf("tcpfallback: loading the test CA (%s in %s, its key in %s): %w (write one with WriteTestCertificates or `ftvm certs`)", CAFileName, dir, caKeyDir, err)
	}
	caCert, err := x509.ParseCertificate(ca.Certificate[0])
	if err != nil {
		return err
	}
	caKey, ok := ca.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		return fmt.Errorf("tcpfallback: the CA key in %s is not an ECDSA key", caKeyDir)
	}
	return writeHostCertificate(dir, host, caCert, caKey, time.Now())
}

func writeHostCertificate(dir, h string, caCert *x509.Certificate, caKey *ecdsa.PrivateKey, now time.Time) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: h, Organization: []string{"ftvm"}},
		DNSNames:     []string{h, "localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(testCertValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	if err := writePEM(dir, CertFileName(h), "CERTIFICATE", der, 0o644); err != nil {
		return err
	}
	if err := writeKey(dir, KeyFileName(h), key); err != nil {
		return err
	}
	return nil
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}

func writeKey(dir, name string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return writePEM(dir, name, "PRIVATE KEY", der, 0o600)
}

func writePEM(dir, name, blockType string, der []byte, mode os.FileMode) error {
	p := filepath.Join(dir, name)
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("tcpfallback: writing %s: %w", p, err)
	}
	if err := pem.Encode(f, &pem.Block{Type: blockType, Bytes: der}); err != nil {
		f.Close()
		return fmt.Errorf("tcpfallback: writing %s: %w", p, err)
	}
	return f.Close()
}

// LoadTLSConfig builds the mutual-TLS configuration for host from a
// directory laid out as WriteTestCertificates leaves it: ca.pem, host.pem,
// host-key.pem. See NewTLSConfig.
func LoadTLSConfig(dir, host string) (*tls.Config, error) {
	return NewTLSConfig(filepath.Join(dir, CAFileName), filepath.Join(dir, CertFileName(host)), filepath.Join(dir, KeyFileName(host)))
}

// NewTLSConfig builds the configuration both ends use: TLS 1.3 only, this
// host's certificate offered in both roles, the peer's certificate required
// and verified against the CA in both roles. The dialer also checks the
// listener's name: set ServerName on the result (or Config.TLSServerName)
// when dialing by a name the certificate does not carry.
func NewTLSConfig(caFile, certFile, keyFile string) (*tls.Config, error) {
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("tcpfallback: reading CA certificate: %w (generate test certificates with `ftvm certs`)", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("tcpfallback: %s holds no PEM certificate", caFile)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("tcpfallback: loading %s and %s: %w", certFile, keyFile, err)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	}, nil
}
