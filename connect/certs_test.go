package connect

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/caddymesh/caddymesh/internal/meshtest"
	"github.com/caddymesh/caddymesh/internal/spiffe"
)

// rootsOf returns the roots of a mesh whose one root is ca.
func rootsOf(t testing.TB, ca *meshtest.CA, domain string) *roots {
	t.Helper()
	pemData, err := os.ReadFile(ca.File)
	if err != nil {
		t.Fatal(err)
	}
	r, err := parseRoots(&api.CARootList{TrustDomain: domain, ActiveRootID: "r1", Roots: []*api.CARoot{{ID: "r1", RootCertPEM: string(pemData), Active: true}}})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// leafOf returns a leaf as Consul's agent would give it.
func leafOf(t testing.TB, cert meshtest.Leaf, service string) *api.LeafCert {
	t.Helper()
	certPEM, err := os.ReadFile(cert.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := os.ReadFile(cert.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	return &api.LeafCert{Service: service, CertPEM: string(certPEM), PrivateKeyPEM: string(keyPEM)}
}

func TestParseLeafReadsTheIdentityAndHidesTheKey(t *testing.T) {
	ca := meshtest.NewCA(t, "connect-ca")
	answer := leafOf(t, ca.Service(t, "spiffe://td.consul/ns/default/dc/dc1/svc/api"), "api")
	l, err := parseLeaf(answer)
	if err != nil {
		t.Fatal(err)
	}
	if l.id.String() != "spiffe://td.consul/ns/default/dc/dc1/svc/api" || l.serial == "" || !l.validBefore.After(l.validAfter) {
		t.Errorf("leaf %+v", l)
	}
	keyLine := strings.Split(answer.PrivateKeyPEM, "\n")[1]
	broken := *answer
	broken.PrivateKeyPEM = strings.Replace(answer.PrivateKeyPEM, keyLine, keyLine[:10]+"AAAA"+keyLine[14:], 1)
	if _, err := parseLeaf(&broken); err == nil || strings.Contains(err.Error(), keyLine[:20]) {
		t.Errorf("a broken key: %v; want an error that does not show it", err)
	}
	noID := leafOf(t, ca.Server(t), "api")
	if _, err := parseLeaf(noID); err == nil {
		t.Error("a leaf without a SPIFFE ID was taken")
	}
}

func TestColonHexIsConsulsSerialFormat(t *testing.T) {
	for in, want := range map[string]string{"\x09": "09", "\x2f\xaf\x58": "2f:af:58", "": ""} {
		if got := colonHex([]byte(in)); got != want {
			t.Errorf("colonHex(%x) = %q, want %q", in, got, want)
		}
	}
}

// state returns the connection state of a handshake that presented cert.
func state(t testing.TB, cert meshtest.Leaf) tls.ConnectionState {
	parsed, err := x509.ParseCertificate(cert.Certificate.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return tls.ConnectionState{PeerCertificates: []*x509.Certificate{parsed}}
}

func TestVerifyServerRequiresTheDestinationsIdentity(t *testing.T) {
	ca, other := meshtest.NewCA(t, "connect-ca"), meshtest.NewCA(t, "other-ca")
	tr := &Transport{held: &held{roots: new(rootsWatch)}}
	tr.held.roots.current.Store(rootsOf(t, ca, "td.consul"))
	want := spiffe.ServiceID{TrustDomain: "td.consul", Partition: "default", Namespace: "default", Datacenter: "dc1", Service: "db"}
	now := time.Now()
	for name, tc := range map[string]struct {
		cert meshtest.Leaf
		ok   bool
	}{
		"db":                          {ca.Service(t, "spiffe://td.consul/ns/default/dc/dc1/svc/db"), true},
		"db in capitals":              {ca.Service(t, "spiffe://TD.consul/ns/default/dc/dc1/svc/db"), true},
		"another service":             {ca.Service(t, "spiffe://td.consul/ns/default/dc/dc1/svc/cache"), false},
		"db in another datacenter":    {ca.Service(t, "spiffe://td.consul/ns/default/dc/dc2/svc/db"), false},
		"db of another trust domain":  {ca.Service(t, "spiffe://evil.consul/ns/default/dc/dc1/svc/db"), false},
		"db from another CA":          {other.Service(t, "spiffe://td.consul/ns/default/dc/dc1/svc/db"), false},
		"a host name, no SPIFFE ID":   {ca.Server(t), false},
		"db with a path after it":     {ca.Service(t, "spiffe://td.consul/ns/default/dc/dc1/svc/db/x"), false},
		"db in another partition":     {ca.Service(t, "spiffe://td.consul/ap/eng/ns/default/dc/dc1/svc/db"), false},
		"db in the default partition": {ca.Service(t, "spiffe://td.consul/ap/default/ns/default/dc/dc1/svc/db"), true},
	} {
		err := tr.verifyServer(state(t, tc.cert), want, now)
		if (err == nil) != tc.ok {
			t.Errorf("%s: %v, want ok=%v", name, err, tc.ok)
		}
	}
	if err := tr.verifyServer(tls.ConnectionState{}, want, now); err == nil {
		t.Error("no certificate was taken")
	}
}

func TestCertificateOnlyWhileTheLeafIsValid(t *testing.T) {
	ca := meshtest.NewCA(t, "connect-ca")
	l, err := parseLeaf(leafOf(t, ca.Service(t, "spiffe://td.consul/ns/default/dc/dc1/svc/api"), "api"))
	if err != nil {
		t.Fatal(err)
	}
	h := &held{leaf: &leafWatch{key: leafKey{Service: "api"}}}
	if _, err := h.certificate(time.Now()); !errors.Is(err, errNoLeaf) {
		t.Errorf("before Consul gave a leaf: %v, want errNoLeaf", err)
	}
	h.leaf.current.Store(l)
	if cert, err := h.certificate(l.validBefore.Add(-time.Second)); err != nil || cert != l.cert {
		t.Errorf("a second before expiry: %v, %v; want the leaf", cert, err)
	}
	for range 2 {
		if _, err := h.certificate(l.validBefore); !errors.Is(err, errNoLeaf) {
			t.Errorf("at expiry: %v, want errNoLeaf", err)
		}
	}
	if h.leaf.expiredLogged.Load() != l {
		t.Error("the expiry was not recorded as logged")
	}
}

func TestPoolRefusesRootsConsulDrops(t *testing.T) {
	ca := meshtest.NewCA(t, "connect-ca")
	p := &CAPool{held: &held{roots: new(rootsWatch)}, pool: x509.NewCertPool()}
	listed := rootsOf(t, ca, "td.consul")
	p.held.roots.current.Store(listed)
	p.pool.AddCertWithConstraint(listed.certs[0], p.stillListed(listed.certs[0]))
	leaf := state(t, ca.Service(t, "spiffe://td.consul/ns/default/dc/dc1/svc/web")).PeerCertificates[0]
	verify := func() error {
		_, err := leaf.Verify(x509.VerifyOptions{Roots: p.pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		return err
	}
	if err := verify(); err != nil {
		t.Fatalf("while Consul lists the root: %v", err)
	}
	p.held.roots.current.Store(rootsOf(t, meshtest.NewCA(t, "next-ca"), "td.consul"))
	if err := verify(); err == nil {
		t.Error("a root Consul dropped still verifies")
	}
}

func TestParseRootsRefusesWhatIsNoRoot(t *testing.T) {
	for name, list := range map[string]*api.CARootList{
		"no root":          {TrustDomain: "td.consul"},
		"bad trust domain": {TrustDomain: "TD/x", Roots: []*api.CARoot{{ID: "r", RootCertPEM: "x"}}},
		"no PEM":           {TrustDomain: "td.consul", Roots: []*api.CARoot{{ID: "r", RootCertPEM: "not pem"}}},
		"bad certificate":  {TrustDomain: "td.consul", Roots: []*api.CARoot{{ID: "r", RootCertPEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("x")}))}}},
	} {
		if _, err := parseRoots(list); err == nil {
			t.Errorf("%s: taken", name)
		}
	}
}
