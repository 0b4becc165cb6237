// Package spiffe reads and writes Consul's service identities, SPIFFE IDs
// in Consul's exact grammar, and knows which trust domain each Connect CA
// root that caddymesh trusts belongs to.
package spiffe

import (
	"cmp"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/caddymesh/caddymesh/internal/svcname"
)

// ServiceID is a Consul service identity,
// spiffe://<trust-domain>[/ap/<partition>]/ns/<namespace>/dc/<datacenter>/svc/<service>.
type ServiceID struct {
	// TrustDomain is the mesh's trust domain, such as <cluster-id>.consul.
	TrustDomain string `json:"trust_domain,omitempty"`
	// Partition is the admin partition, lower-cased; "default" when the ID
	// names none.
	Partition string `json:"partition,omitempty"`
	// Namespace is the service's namespace.
	Namespace string `json:"namespace,omitempty"`
	// Datacenter is the service's datacenter.
	Datacenter string `json:"datacenter,omitempty"`
	// Service is the service's name.
	Service string `json:"service,omitempty"`
}

// String returns the ID as Consul writes it (connect.SpiffeIDService.URI):
// the /ap/ segment only for a partition other than "default".
func (id ServiceID) String() string {
	path := "/ns/" + id.Namespace + "/dc/" + id.Datacenter + "/svc/" + id.Service
	if id.Partition != "" && id.Partition != "default" {
		path = "/ap/" + id.Partition + path
	}
	return (&url.URL{Scheme: "spiffe", Host: id.TrustDomain, Path: path}).String()
}

// ParseServiceID reads a Consul service SPIFFE ID in Consul's grammar
// (connect.ParseCertURI): spiffe://<trust-domain>[/ap/<partition>]/ns/<namespace>/dc/<datacenter>/svc/<service>,
// each value one or more characters other than a slash, percent-decoded.
// Nothing else is in the URI, as Envoy's match of Consul's identities
// (anchored at both ends) requires; the service follows the service-name
// rule.
func ParseServiceID(uri *url.URL) (ServiceID, error) {
	if uri.Scheme != "spiffe" || uri.Opaque != "" || uri.User != nil || uri.Port() != "" || uri.RawQuery != "" || uri.ForceQuery || uri.Fragment != "" {
		return ServiceID{}, errors.New("not a SPIFFE ID: it has more than a trust domain and a path")
	}
	path := uri.Path
	if uri.RawPath != "" {
		path = uri.RawPath
	}
	id := ServiceID{TrustDomain: uri.Host}
	var ok bool
	if id.Partition, id.Namespace, id.Datacenter, id.Service, ok = splitServicePath(path); !ok {
		return ServiceID{}, errors.New("not a Consul service SPIFFE ID, [/ap/PARTITION]/ns/NAMESPACE/dc/DATACENTER/svc/SERVICE")
	}
	if uri.RawPath != "" {
		for _, part := range []*string{&id.Partition, &id.Namespace, &id.Datacenter, &id.Service} {
			var err error
			if *part, err = url.PathUnescape(*part); err != nil {
				return ServiceID{}, fmt.Errorf("SPIFFE ID: %v", err)
			}
		}
	}
	if !svcname.Valid(id.Service) {
		return ServiceID{}, errors.New("SPIFFE ID: the service is not a service name")
	}
	id.Partition = strings.ToLower(cmp.Or(id.Partition, "default"))
	return id, nil
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

// ValidTrustDomain reports whether name is a SPIFFE trust domain name.
func ValidTrustDomain(name string) bool {
	return name != "" && strings.Trim(name, "abcdefghijklmnopqrstuvwxyz0123456789.-_") == ""
}
