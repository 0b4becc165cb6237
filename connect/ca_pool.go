package connect

import (
	"crypto/sha256"
	"crypto/x509"
	"errors"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddytls"

	"github.com/caddymesh/caddymesh/internal/consul"
)

func init() {
	caddy.RegisterModule(new(CAPool))
}

// CAPool is a trust pool of Consul's Connect CA roots, for client
// certificates (`client_auth { trust_pool connect }`) or a transport's
// server certificates. Caddy reads a pool once per config load, so the
// pool holds the roots Consul lists then (waiting up to 3 s for Consul's
// first answer), each trusted only while Consul still lists it, or a root
// cross-signed by it that the client's chain carries: a root Consul drops
// is refused from the next handshake on. A root Consul adds later (CA
// rotation) is trusted through the cross-signed certificate Consul puts in
// every leaf it signs (its built-in CA and Vault do), also after Consul
// prunes the old root, and itself from the next config load. Two
// rotations without a config load in between are not followed: the
// leaves of the third root carry only its certificate cross-signed by the
// second, which the pool does not hold; the roots watch logs it as an
// error, asking for a config load. Should Consul be unreachable at the
// load, the pool is empty and every client certificate is refused until
// the next load.
type CAPool struct {
	// Connection settings overriding the mesh app's, field by field.
	Consul *consul.Config `json:"consul,omitempty"`

	held    *held
	pool    *x509.CertPool
	anchors map[[sha256.Size]byte]bool // SHA-256 of the public key of each root in pool
}

// CaddyModule returns the Caddy module information.
func (*CAPool) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "tls.ca_pool.source.connect",
		New: func() caddy.Module { return new(CAPool) },
	}
}

// Provision takes the shared watch of the roots and builds the pool. As
// the client trust of every TLS connection policy of an HTTP server, it
// turns the server's strict SNI-Host check off (see acceptConnectClients).
func (p *CAPool) Provision(ctx caddy.Context) error {
	acceptConnectClients(ctx)
	var err error
	if p.held, err = hold(ctx, p.Consul, ""); err != nil {
		return err
	}
	if err := p.build(); err != nil {
		ctx.Logger().Error(err.Error())
	}
	return nil
}

// errNoRoots says the pool was built before Consul's first answer.
var errNoRoots = errors.New("no Connect roots from Consul at this config load: every client certificate is refused until the next load")

// build fills the pool with the roots Consul lists now, each constrained
// to stay trusted, and records it with the roots watch, which tells when
// a rotation leaves it behind.
func (p *CAPool) build() error {
	p.pool, p.anchors = x509.NewCertPool(), map[[sha256.Size]byte]bool{}
	p.held.roots.pools.Store(p, struct{}{})
	current := p.held.roots.current.Load()
	if current == nil {
		return errNoRoots
	}
	for _, root := range current.certs {
		p.pool.AddCertWithConstraint(root, p.stillListed(root))
		p.anchors[sha256.Sum256(root.RawSubjectPublicKeyInfo)] = true
	}
	return nil
}

// followsRotation reports whether the pool verifies the leaves of next's
// active root after a rotation from old's: the pool holds the new root, or
// the old one, which cross-signed it. After two rotations since the pool
// was built, it holds neither, and a config load is needed.
func (p *CAPool) followsRotation(old, next *roots) bool {
	return p.anchored(next.active) || old != nil && p.anchored(old.active)
}

func (p *CAPool) anchored(root *x509.Certificate) bool {
	return root != nil && p.anchors[sha256.Sum256(root.RawSubjectPublicKeyInfo)]
}

// errRootDropped says a chain ends at a root Consul no longer lists.
var errRootDropped = errors.New("connect: Consul no longer lists this Connect CA root")

// stillListed returns the constraint that a chain ending at root is one
// Consul still trusts: root is among its current roots, or the chain goes
// through a cross-signed certificate carrying the key of a current root.
// The second case is the pool's way to follow a CA rotation without a
// reload: Consul prunes the old root once the leaves it signed have expired
// (2 x LeafCertTTL after the rotation), while the leaves of the new root
// still carry its certificate cross-signed by the old one.
func (p *CAPool) stillListed(root *x509.Certificate) func([]*x509.Certificate) error {
	fingerprint := sha256.Sum256(root.Raw)
	return func(chain []*x509.Certificate) error {
		current := p.held.roots.current.Load()
		if current == nil || !current.listed[fingerprint] && !current.signedByListedRootKey(chain) {
			return errRootDropped
		}
		return nil
	}
}

// CertPool returns the pool.
func (p *CAPool) CertPool() *x509.CertPool { return p.pool }

// Cleanup lets go of the watch.
func (p *CAPool) Cleanup() error {
	if p.held != nil && p.held.roots != nil {
		p.held.roots.pools.Delete(p)
	}
	p.held.release()
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner  = (*CAPool)(nil)
	_ caddy.CleanerUpper = (*CAPool)(nil)
	_ caddytls.CA        = (*CAPool)(nil)
)
