package middleware

// How mesh_identity tells who a caller is: a trusted header, or the
// SPIFFE ID of its client certificate.

import (
	"cmp"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"

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
	case !id.acceptsTrustDomain(uris[0].Host):
		return who, "SPIFFE ID of a trust domain not accepted", true
	}
	return who, "", true
}

// acceptsTrustDomain reports whether SPIFFE IDs of domain may call.
func (id *Identity) acceptsTrustDomain(domain string) bool {
	if id.trustDomain != nil {
		known := id.trustDomain()
		return known != "" && domain == known
	}
	return slices.Contains(id.TrustDomains, domain)
}

// parseServiceID reads a Consul service SPIFFE ID in Consul's grammar
// (connect.ParseCertURI): spiffe://<trust-domain>[/ap/<partition>]/ns/<namespace>/dc/<datacenter>/svc/<service>,
// each value one or more characters other than a slash, percent-decoded.
// Nothing else is in the URI, as Envoy's match of Consul's identities
// (anchored at both ends) requires; the service follows the service-name
// rule.
func parseServiceID(id *url.URL) (caller, error) {
	who := caller{spiffeID: id.String()}
	if id.Opaque != "" || id.User != nil || id.Port() != "" || id.RawQuery != "" || id.ForceQuery || id.Fragment != "" {
		return who, errors.New("not a SPIFFE ID: it has more than a trust domain and a path")
	}
	path := id.Path
	if id.RawPath != "" {
		path = id.RawPath
	}
	partition, namespace, datacenter, service, ok := splitServicePath(path)
	if !ok {
		return who, errors.New("not a Consul service SPIFFE ID, [/ap/PARTITION]/ns/NAMESPACE/dc/DATACENTER/svc/SERVICE")
	}
	if id.RawPath != "" {
		var err error
		for _, part := range []*string{&partition, &namespace, &datacenter, &service} {
			if *part, err = url.PathUnescape(*part); err != nil {
				return who, fmt.Errorf("SPIFFE ID: %v", err)
			}
		}
	}
	if !svcname.Valid(service) {
		return who, errors.New("SPIFFE ID: the service is not a service name")
	}
	who.service, who.namespace, who.partition = service, namespace, strings.ToLower(cmp.Or(partition, "default"))
	return who, nil
}

// splitServicePath splits the path of a Consul service SPIFFE ID, as
// Consul's expression ^(?:/ap/([^/]+))?/ns/([^/]+)/dc/([^/]+)/svc/([^/]+)$
// does.
func splitServicePath(path string) (partition, namespace, datacenter, service string, ok bool) {
	rest := path
	if strings.HasPrefix(rest, "/ap/") {
		if partition, rest, ok = cutField(rest, "/ap/"); !ok {
			return "", "", "", "", false
		}
	}
	namespace, rest, ok1 := cutField(rest, "/ns/")
	datacenter, rest, ok2 := cutField(rest, "/dc/")
	service, rest, ok3 := cutField(rest, "/svc/")
	return partition, namespace, datacenter, service, ok1 && ok2 && ok3 && rest == ""
}

// cutField takes <prefix><value> from the front of s, the value running
// to the next slash; ok when it is there and the value is not empty.
func cutField(s, prefix string) (value, rest string, ok bool) {
	s, ok = strings.CutPrefix(s, prefix)
	if !ok {
		return "", s, false
	}
	end := strings.IndexByte(s, '/')
	if end < 0 {
		end = len(s)
	}
	return s[:end], s[end:], end > 0
}
