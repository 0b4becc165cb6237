package gateway

import (
	"context"
	"fmt"
	"slices"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
)

func init() {
	caddy.RegisterModule(CertificatePermission{})
}

// CertificatePermission lets Caddy's on-demand TLS obtain a certificate
// only for a host that a service declares a route for, by name or by
// wildcard, in the current table of a mesh_router: the hosts Consul says
// are served, and no other. Routes for any host allow no certificate.
type CertificatePermission struct{}

// CaddyModule returns the Caddy module information.
func (CertificatePermission) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "tls.permission.mesh",
		New: func() caddy.Module { return new(CertificatePermission) },
	}
}

// CertificateAllowed reports whether a route declares name.
func (CertificatePermission) CertificateAllowed(_ context.Context, name string) error {
	if slices.ContainsFunc(routeTables(), func(t *routeTable) bool { return t.allowsCertificate(name) }) {
		return nil
	}
	return fmt.Errorf("%s: no service declares a route for this host: %w", name, caddytls.ErrPermissionDenied)
}

// Interface guards
var (
	_ caddytls.OnDemandPermission = CertificatePermission{}
)
