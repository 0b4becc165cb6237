package middleware

// How mesh_identity tells who a caller is: a trusted header, or the
// SPIFFE ID of its client certificate.

import (
	"crypto/x509"
	"net/http"
	"net/netip"
	"net/url"
	"slices"

	"github.com/caddymesh/caddymesh/internal/spiffe"
	"github.com/caddymesh/caddymesh/internal/svcname"
)

// trusts reports whether the peer at remoteAddr is in a trusted network.
func (src *IdentitySource) trusts(remoteAddr string) bool {
	peer, err := netip.ParseAddrPort(remoteAddr)
	if err != nil {
		return false
	}
	addr := peer.Addr().Unmap()
	return slices.ContainsFunc(src.trusted, func(p netip.Prefix) bool { return p.Contains(addr) })
}

// fromHeader reads the caller from the identity header, sent by a trusted
// peer: found when the request has the header, and then the reason it is
// not an identity, if it is not.
func (src *IdentitySource) fromHeader(r *http.Request) (who caller, reason string, found bool) {
	values := r.Header[src.Header]
	switch {
	case len(values) == 0:
		return caller{}, "", false
	case len(values) > 1:
		return caller{}, "several " + src.Header + " headers", true
	case !svcname.Valid(values[0]):
		return caller{service: values[0]}, "caller name is not a service name", true
	}
	return caller{service: values[0]}, "", true
}

// fromCertificate reads the caller from the SPIFFE ID of a client
// certificate that Caddy verified: found when the certificate has one,
// and then the reason it is not an identity mesh_identity accepts, if it
// is not.
func (id *Identity) fromCertificate(r *http.Request) (who caller, reason string, found bool) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.PeerCertificates) == 0 {
		return caller{}, "", false
	}
	uris := r.TLS.PeerCertificates[0].URIs
	if !slices.ContainsFunc(uris, func(u *url.URL) bool { return u.Scheme == "spiffe" }) {
		return caller{}, "", false
	}
	if len(uris) > 1 {
		return caller{}, "the client certificate has several URI SANs, not one SPIFFE ID", true
	}
	who, err := parseServiceID(uris[0])
	switch {
	case err != nil:
		return who, err.Error(), true
	case !id.acceptsTrustDomain(uris[0].Host, r.TLS.VerifiedChains[0]):
		return who, "SPIFFE ID of a trust domain not accepted", true
	}
	return who, "", true
}

// acceptsTrustDomain reports whether SPIFFE IDs of domain may call with
// a client certificate of the verified chain. A chain that ends at a
// Connect CA root (trust_pool connect) admits only that root's trust
// domain, and among the configured ones if any are; otherwise the
// configured trust domains decide, else the intentions' mesh's.
func (id *Identity) acceptsTrustDomain(domain string, chain []*x509.Certificate) bool {
	rootDomain, connect := spiffe.Trusted.TrustDomainOf(chain[len(chain)-1])
	switch {
	case connect && domain != rootDomain:
		return false
	case len(id.TrustDomains) > 0:
		return slices.Contains(id.TrustDomains, domain)
	case connect:
		return true
	case id.trustDomain != nil:
		known := id.trustDomain()
		return known != "" && domain == known
	}
	return false
}

// parseServiceID reads the caller from a Consul service SPIFFE ID, in
// Consul's grammar (spiffe.ParseServiceID).
func parseServiceID(uri *url.URL) (caller, error) {
	id, err := spiffe.ParseServiceID(uri)
	if err != nil {
		return caller{spiffeID: uri.String()}, err
	}
	return caller{service: id.Service, namespace: id.Namespace, partition: id.Partition, spiffeID: uri.String()}, nil
}
