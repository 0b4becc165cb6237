package connect

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/caddymesh/caddymesh/internal/spiffe"
)

// leaf is a service's certificate as Consul's CA issued it, parsed once.
// Its private key lives only in cert, in memory: never logged, shown or
// stored.
type leaf struct {
	cert        *tls.Certificate // its Leaf parsed, the chain Consul sent after it
	id          spiffe.ServiceID
	serial      string
	validAfter  time.Time
	validBefore time.Time
}

// parseLeaf reads the leaf certificate Consul's agent gave for a service.
// Errors never hold the key.
func parseLeaf(answer *api.LeafCert) (*leaf, error) {
	cert, err := tls.X509KeyPair([]byte(answer.CertPEM), []byte(answer.PrivateKeyPEM))
	if err != nil {
		return nil, fmt.Errorf("connect: the leaf certificate of %s does not load: %v", answer.Service, errors.Unwrap(err))
	}
	uris := cert.Leaf.URIs
	if len(uris) != 1 {
		return nil, fmt.Errorf("connect: the leaf certificate of %s has %d URI SANs, want its one SPIFFE ID", answer.Service, len(uris))
	}
	id, err := spiffe.ParseServiceID(uris[0])
	if err != nil {
		return nil, fmt.Errorf("connect: the leaf certificate of %s: %v", answer.Service, err)
	}
	return &leaf{
		cert:        &cert,
		id:          id,
		serial:      colonHex(cert.Leaf.SerialNumber.Bytes()),
		validAfter:  cert.Leaf.NotBefore,
		validBefore: cert.Leaf.NotAfter,
	}, nil
}

// colonHex writes bytes as Consul writes serial numbers: aa:bb:cc.
func colonHex(b []byte) string {
	s := hex.EncodeToString(b)
	var out strings.Builder
	for i := 0; i < len(s); i += 2 {
		if i > 0 {
			out.WriteByte(':')
		}
		out.WriteString(s[i : i+2])
	}
	return out.String()
}

// roots are Consul's Connect CA roots: the certificates that sign every
// leaf of the mesh, old ones included while leaves they signed may live.
type roots struct {
	trustDomain string
	activeID    string
	ids         []string
	certs       []*x509.Certificate        // the root certificates
	active      *x509.Certificate          // the active one, among certs
	pool        *x509.CertPool             // certs
	listed      map[[sha256.Size]byte]bool // SHA-256 of each root's DER
	listedKeys  map[[sha256.Size]byte]bool // SHA-256 of each root's public key (SubjectPublicKeyInfo)
}

// parseRoots reads Consul's answer from /v1/agent/connect/ca/roots.
func parseRoots(answer *api.CARootList) (*roots, error) {
	if !spiffe.ValidTrustDomain(answer.TrustDomain) {
		return nil, fmt.Errorf("connect: Consul's trust domain %q is not a SPIFFE trust domain name", answer.TrustDomain)
	}
	r := &roots{
		trustDomain: answer.TrustDomain,
		activeID:    answer.ActiveRootID,
		pool:        x509.NewCertPool(),
		listed:      make(map[[sha256.Size]byte]bool),
		listedKeys:  make(map[[sha256.Size]byte]bool),
	}
	for _, root := range answer.Roots {
		certs, err := parsePEMCertificates(root.RootCertPEM)
		if err != nil || len(certs) == 0 {
			return nil, fmt.Errorf("connect: root %s: no certificate: %v", root.ID, err)
		}
		r.ids = append(r.ids, root.ID)
		if root.ID == answer.ActiveRootID {
			r.active = certs[0]
		}
		r.certs = append(r.certs, certs[0])
		r.pool.AddCert(certs[0])
		r.listed[sha256.Sum256(certs[0].Raw)] = true
		r.listedKeys[sha256.Sum256(certs[0].RawSubjectPublicKeyInfo)] = true
	}
	if len(r.certs) == 0 {
		return nil, errors.New("connect: Consul lists no Connect CA root")
	}
	return r, nil
}

// parsePEMCertificates reads every certificate of a PEM bundle.
func parsePEMCertificates(bundle string) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := []byte(bundle)
	for {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			return certs, nil
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, cert)
	}
}

// signedByListedRootKey reports whether one of chain's intermediates
// (chain is the peer's certificate, then the intermediates up to, not
// including, the root, as x509 hands a root's constraint) has the public
// key of a listed root: a root cross-signed by another, as Consul puts in each leaf after
// a CA rotation. The certificate below it was then signed by a key Consul
// trusts now, whatever root the chain ends at.
func (r *roots) signedByListedRootKey(chain []*x509.Certificate) bool {
	for _, cert := range chain[min(1, len(chain)):] {
		if r.listedKeys[sha256.Sum256(cert.RawSubjectPublicKeyInfo)] {
			return true
		}
	}
	return false
}

// rootsDER returns the DER encodings of the roots.
func (r *roots) rootsDER() [][]byte {
	der := make([][]byte, len(r.certs))
	for i, cert := range r.certs {
		der[i] = cert.Raw
	}
	return der
}

// verify checks that chain (the peer's certificate first, then the
// intermediates it sent, such as a new root cross-signed by an old one)
// leads to one of the roots, for usage.
func (r *roots) verify(chain []*x509.Certificate, usage x509.ExtKeyUsage, now time.Time) error {
	if len(chain) == 0 {
		return errors.New("no certificate")
	}
	intermediates := x509.NewCertPool()
	for _, cert := range chain[1:] {
		intermediates.AddCert(cert)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{
		Roots:         r.pool,
		Intermediates: intermediates,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{usage},
	})
	return err
}

// uriSAN returns the one URI SAN of cert, or an error.
func uriSAN(cert *x509.Certificate) (*url.URL, error) {
	if len(cert.URIs) != 1 {
		return nil, fmt.Errorf("the certificate has %d URI SANs, want one SPIFFE ID", len(cert.URIs))
	}
	return cert.URIs[0], nil
}
