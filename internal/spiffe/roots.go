package spiffe

import (
	"crypto/x509"
	"maps"
	"sync"
	"sync/atomic"
)

// Roots is the set of Connect CA roots of the meshes caddymesh trusts
// (one per Consul cluster it watches the roots of), each with its trust
// domain: what tells mesh_identity which trust domain a client
// certificate verified by such a root may claim.
type Roots struct {
	mu      sync.Mutex
	byOwner map[any]map[string]string // owner → root DER → trust domain
	merged  atomic.Pointer[map[string]string]
}

// Trusted is the process's set: the connect roots watches record theirs in
// it, mesh_identity reads it.
var Trusted = new(Roots)

// Set records the roots (DER encodings) of owner and their trust domain,
// in place of what owner recorded before; no roots forget owner.
func (r *Roots) Set(owner any, domain string, roots [][]byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.byOwner == nil {
		r.byOwner = make(map[any]map[string]string)
	}
	delete(r.byOwner, owner)
	if len(roots) > 0 {
		own := make(map[string]string, len(roots))
		for _, der := range roots {
			own[string(der)] = domain
		}
		r.byOwner[owner] = own
	}
	merged := make(map[string]string)
	for _, own := range r.byOwner {
		maps.Copy(merged, own)
	}
	r.merged.Store(&merged)
}

// TrustDomainOf returns the trust domain of root, when it is a Connect CA
// root of the set. It takes no lock and allocates nothing.
func (r *Roots) TrustDomainOf(root *x509.Certificate) (string, bool) {
	merged := r.merged.Load()
	if merged == nil {
		return "", false
	}
	domain, ok := (*merged)[string(root.Raw)]
	return domain, ok
}
