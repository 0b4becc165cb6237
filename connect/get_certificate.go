// Package connect makes Caddy a Connect-native service of Consul's service
// mesh: it presents the leaf certificate Consul's CA issues a service
// (tls.get_certificate.connect), trusts Consul's Connect CA roots for
// client certificates (tls.ca_pool.source.connect), and calls other
// services over Connect's mutual TLS, verifying their SPIFFE IDs
// (http.reverse_proxy.transport.connect). Leaf and roots come from the
// local agent by blocking queries, held in memory only, shared by every
// module and config that needs them, and renewed without a reload.
package connect

import (
	"context"
	"crypto/tls"
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"

	"github.com/caddymesh/caddymesh/internal/consul"
	"github.com/caddymesh/caddymesh/internal/svcname"
	"github.com/caddymesh/caddymesh/internal/validate"
)

func init() {
	caddy.RegisterModule(new(CertGetter))
}

// CertGetter is the server certificate of a site that serves a service in
// Consul's service mesh: the service's current leaf certificate from
// Consul's CA, whatever the TLS server name (Consul's proxies send none).
// A renewed leaf is presented from the next handshake on. Until Consul
// first gives one, and once the one held has expired with Consul
// unreachable since, handshakes fail: there is no fallback to another
// certificate.
type CertGetter struct {
	// The service whose leaf certificate to present, as registered in
	// Consul. Required; it follows the service-name rule.
	Service string `json:"service,omitempty"`

	// Connection settings overriding the mesh app's, field by field.
	Consul *consul.Config `json:"consul,omitempty"`

	held      *held
	validated validate.Once // Validate's answer, for Caddy's call after Provision
}

// CaddyModule returns the Caddy module information.
func (*CertGetter) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "tls.get_certificate.connect",
		New: func() caddy.Module { return new(CertGetter) },
	}
}

// Provision takes the shared watch of the service's leaf.
func (g *CertGetter) Provision(ctx caddy.Context) error {
	if err := g.Validate(); err != nil {
		return err
	}
	var err error
	g.held, err = hold(ctx, g.Consul, g.Service)
	return err
}

// GetCertificate returns the service's current leaf certificate.
func (g *CertGetter) GetCertificate(_ context.Context, _ *tls.ClientHelloInfo) (*tls.Certificate, error) {
	return g.held.certificate(time.Now())
}

// Cleanup lets go of the watch.
func (g *CertGetter) Cleanup() error {
	g.held.release()
	return nil
}

// Validate rejects a bad service name, naming it. Provision calls it
// before acting on it; its check runs once.
func (g *CertGetter) Validate() error {
	return g.validated.Do(func() error { return validService("get_certificate connect", g.Service) })
}

// validService checks the service a module names.
func validService(module, service string) error {
	if !svcname.Valid(service) {
		return fmt.Errorf("%s: service %q: a service name is required (letters, digits, '-', '_' and '.', at most 256 bytes)", module, service)
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner  = (*CertGetter)(nil)
	_ caddy.CleanerUpper = (*CertGetter)(nil)
	_ caddy.Validator    = (*CertGetter)(nil)
	_ certmagic.Manager  = (*CertGetter)(nil)
)
