package meshtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// CA is a certificate authority for tests, as Consul's built-in CA would
// be: it issues SPIFFE service certificates and server certificates.
type CA struct {
	// File is the path of the CA certificate, PEM-encoded.
	File string
	// Pool trusts the CA.
	Pool *x509.CertPool

	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	dir  string
}

// NewCA makes a CA whose files live in the test's temporary directory.
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	key := newKey(t)
	template := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca := &CA{key: key, dir: t.TempDir(), Pool: x509.NewCertPool()}
	if ca.cert, err = x509.ParseCertificate(der); err != nil {
		t.Fatal(err)
	}
	ca.Pool.AddCert(ca.cert)
	ca.File = ca.write(t, name+".pem", "CERTIFICATE", der)
	return ca
}

// Leaf is a certificate the CA issued, with its key.
type Leaf struct {
	// CertFile and KeyFile are the PEM files of the certificate and key.
	CertFile, KeyFile string
	// Certificate is the pair, for a TLS client or server.
	Certificate tls.Certificate
}

// Service issues a certificate for a Consul service, as Consul's CA does
// when asked for the service's name as a DNS SAN: the SPIFFE ID spiffeID
// (spiffe://<trust-domain>/ns/default/dc/dc1/svc/web), and the service's
// name. It serves as a client and as a server certificate.
func (ca *CA) Service(t testing.TB, spiffeID string) Leaf {
	t.Helper()
	id, err := url.Parse(spiffeID)
	if err != nil {
		t.Fatal(err)
	}
	service := filepath.Base(id.Path)
	return ca.issue(t, service, &x509.Certificate{
		URIs:        []*url.URL{id},
		DNSNames:    []string{service},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	})
}

// Server issues a server certificate for localhost and 127.0.0.1.
func (ca *CA) Server(t testing.TB) Leaf {
	t.Helper()
	return ca.issue(t, "localhost", &x509.Certificate{
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
}

func (ca *CA) issue(t testing.TB, name string, template *x509.Certificate) Leaf {
	key := newKey(t)
	template.SerialNumber = serial(t)
	template.Subject = pkix.Name{CommonName: name}
	template.NotBefore, template.NotAfter = ca.cert.NotBefore, ca.cert.NotAfter
	template.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, template, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	leaf := Leaf{
		CertFile: ca.write(t, name+"-"+template.SerialNumber.String()+".pem", "CERTIFICATE", der),
		KeyFile:  ca.write(t, name+"-"+template.SerialNumber.String()+"-key.pem", "EC PRIVATE KEY", keyDER),
	}
	if leaf.Certificate, err = tls.LoadX509KeyPair(leaf.CertFile, leaf.KeyFile); err != nil {
		t.Fatal(err)
	}
	return leaf
}

func (ca *CA) write(t testing.TB, name, kind string, der []byte) string {
	path := filepath.Join(ca.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func serial(t testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	return n
}
