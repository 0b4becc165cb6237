package connect

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/caddymesh/caddymesh/internal/consultest"
	"github.com/caddymesh/caddymesh/internal/meshtest"
)

// testCA is a Connect CA root and its key, as Consul's built-in CA makes.
type testCA struct {
	cert *x509.Certificate
	key  crypto.Signer
}

var testSerial int64

// signed returns the certificate of template with pub, signed by issuer
// (itself when nil).
func signed(t *testing.T, template *x509.Certificate, pub crypto.PublicKey, issuer *testCA, key crypto.Signer) *x509.Certificate {
	t.Helper()
	testSerial++
	template.SerialNumber = big.NewInt(testSerial)
	template.NotBefore, template.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	parent := template
	if issuer != nil {
		parent, key = issuer.cert, issuer.key
	}
	der, err := x509.CreateCertificate(rand.Reader, template, parent, pub, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func newKey(t *testing.T) crypto.Signer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func rootTemplate(name string) *x509.Certificate {
	return &x509.Certificate{Subject: pkix.Name{CommonName: name}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature}
}

func newTestCA(t *testing.T, name string) *testCA {
	key := newKey(t)
	return &testCA{cert: signed(t, rootTemplate(name), key.Public(), nil, key), key: key}
}

// crossSigned returns ca's root signed by old, as Consul's CrossSignCA does.
func crossSigned(t *testing.T, ca, old *testCA) *x509.Certificate {
	return signed(t, rootTemplate(ca.cert.Subject.CommonName), ca.key.Public(), old, nil)
}

// clientLeaf returns a client leaf of web signed by ca.
func clientLeaf(t *testing.T, ca *testCA) *x509.Certificate {
	id, _ := url.Parse("spiffe://td.consul/ns/default/dc/dc1/svc/web")
	template := &x509.Certificate{URIs: []*url.URL{id}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	return signed(t, template, newKey(t).Public(), ca, nil)
}

// rootsListing returns the roots as Consul lists cas.
func rootsListing(t *testing.T, cas ...*testCA) *roots {
	list := &api.CARootList{TrustDomain: "td.consul", ActiveRootID: cas[len(cas)-1].cert.Subject.CommonName} // the last is active
	for _, ca := range cas {
		list.Roots = append(list.Roots, &api.CARoot{ID: ca.cert.Subject.CommonName,
			RootCertPEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw}))})
	}
	r, err := parseRoots(list)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// After a rotation from r1 to r2, Consul lists both roots, and later
// prunes r1 (2 x LeafCertTTL after); r2's leaves carry r2 cross-signed by
// r1. A pool built while only r1 was listed must keep trusting them.
func TestPoolFollowsARotationAfterTheOldRootIsPruned(t *testing.T) {
	r1, r2, other := newTestCA(t, "r1"), newTestCA(t, "r2"), newTestCA(t, "other")
	p := &CAPool{held: &held{roots: new(rootsWatch)}, pool: x509.NewCertPool()}
	p.held.roots.current.Store(rootsListing(t, r1))
	p.pool.AddCertWithConstraint(r1.cert, p.stillListed(r1.cert))

	newLeaf, oldLeaf := clientLeaf(t, r2), clientLeaf(t, r1)
	viaR1 := crossSigned(t, r2, r1)
	otherViaR1 := crossSigned(t, other, r1)
	verify := func(leaf *x509.Certificate, intermediates ...*x509.Certificate) error {
		pool := x509.NewCertPool()
		for _, c := range intermediates {
			pool.AddCert(c)
		}
		_, err := leaf.Verify(x509.VerifyOptions{Roots: p.pool, Intermediates: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		return err
	}
	for _, step := range []struct {
		name   string
		listed []*testCA
		leaf   *x509.Certificate
		chain  []*x509.Certificate
		ok     bool
	}{
		{"rotated: r2's leaf", []*testCA{r1, r2}, newLeaf, []*x509.Certificate{viaR1}, true},
		{"rotated: r1's leaf", []*testCA{r1, r2}, oldLeaf, nil, true},
		{"r1 pruned: r2's leaf", []*testCA{r2}, newLeaf, []*x509.Certificate{viaR1}, true},
		{"r1 pruned: r1's leaf", []*testCA{r2}, oldLeaf, nil, false},
		{"r1 pruned: r2's leaf with no cross-signed root", []*testCA{r2}, newLeaf, nil, false},
		{"r2 not listed: r2's leaf", []*testCA{other}, newLeaf, []*x509.Certificate{viaR1}, false},
		{"r1 pruned: a root r1 cross-signed that Consul does not list", []*testCA{r2}, clientLeaf(t, other), []*x509.Certificate{otherViaR1}, false},
	} {
		p.held.roots.current.Store(rootsListing(t, step.listed...))
		if err := verify(step.leaf, step.chain...); (err == nil) != step.ok {
			t.Errorf("%s: verified %v, want %v (%v)", step.name, err == nil, step.ok, err)
		}
	}
}

// A pool holds the roots of its config load: it follows one rotation
// (through the cross-signed root), not two, and says so.
func TestPoolSaysWhenItCannotFollowARotation(t *testing.T) {
	r1, r2, r3 := newTestCA(t, "r1"), newTestCA(t, "r2"), newTestCA(t, "r3")
	w := new(rootsWatch)
	for _, step := range []struct {
		name      string
		poolOf    []*testCA
		old, next []*testCA
		follows   bool
	}{
		{"r1 to r2, a pool of r1", []*testCA{r1}, []*testCA{r1}, []*testCA{r1, r2}, true},
		{"r2 to r3, a pool of r1", []*testCA{r1}, []*testCA{r1, r2}, []*testCA{r2, r3}, false},
		{"r2 to r3, a pool of r1 and r2", []*testCA{r1, r2}, []*testCA{r1, r2}, []*testCA{r2, r3}, true},
		{"r2 to r3, a pool of r3", []*testCA{r3}, []*testCA{r1, r2}, []*testCA{r2, r3}, true},
	} {
		p := &CAPool{held: &held{roots: w}}
		w.current.Store(rootsListing(t, step.poolOf...))
		if err := p.build(); err != nil {
			t.Fatal(err)
		}
		old, next := rootsListing(t, step.old...), rootsListing(t, step.next...)
		if got := p.followsRotation(old, next); got != step.follows {
			t.Errorf("%s: follows %v, want %v", step.name, got, step.follows)
		}
		if got := w.poolsFollow(old, next); got != step.follows {
			t.Errorf("%s: the roots watch says the pools follow: %v, want %v", step.name, got, step.follows)
		}
		_ = p.Cleanup()
		if !w.poolsFollow(old, next) {
			t.Errorf("%s: a pool cleaned up is still asked", step.name)
		}
	}
}

// The same on Consul's own certificates: a real agent's CA is rotated, and
// a leaf its new root signs (with the cross-signed root Consul puts after
// it) verifies against a pool built before the rotation, once the old
// root is pruned (simulated: Consul prunes 2 x LeafCertTTL later).
func TestPoolFollowsConsulsRotationPastThePruning(t *testing.T) {
	a, err := consultest.Start(consultest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Stop)
	before, _, err := a.Client.Agent().ConnectCARoots(nil)
	if err != nil {
		t.Fatal(err)
	}
	listed, err := parseRoots(before)
	if err != nil {
		t.Fatal(err)
	}
	p := &CAPool{held: &held{roots: new(rootsWatch)}}
	p.held.roots.current.Store(listed)
	if err := p.build(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Client.Connect().CASetConfig(&api.CAConfig{Provider: "consul", Config: map[string]any{
		"LeafCertTTL": "72h", "PrivateKeyType": "rsa", "PrivateKeyBits": 2048,
	}}, nil); err != nil {
		t.Fatal(err)
	}
	var after *api.CARootList
	meshtest.Eventually(t, 10*time.Second, "the agent to list the new root", func() bool {
		after, _, err = a.Client.Agent().ConnectCARoots(nil)
		return err == nil && after.ActiveRootID != before.ActiveRootID
	})
	pruned := *after
	pruned.Roots = nil
	for _, root := range after.Roots {
		if root.ID != before.ActiveRootID {
			pruned.Roots = append(pruned.Roots, root)
		}
	}
	current, err := parseRoots(&pruned)
	if err != nil {
		t.Fatal(err)
	}
	p.held.roots.current.Store(current)
	answer, _, err := a.Client.Agent().ConnectCALeaf("fresh", nil)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := parsePEMCertificates(answer.CertPEM)
	if err != nil || len(chain) < 2 {
		t.Fatalf("the new root's leaf: %d certificates, %v; want it and the cross-signed root", len(chain), err)
	}
	verify := func(intermediates []*x509.Certificate) error {
		pool := x509.NewCertPool()
		for _, c := range intermediates {
			pool.AddCert(c)
		}
		_, err := chain[0].Verify(x509.VerifyOptions{Roots: p.pool, Intermediates: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		return err
	}
	if err := verify(chain[1:]); err != nil {
		t.Errorf("the new root's leaf, the old root pruned: %v", err)
	}
	if err := verify(nil); err == nil {
		t.Error("the new root's leaf without the cross-signed root verified against a pool of the old root")
	}
}
