// Package caddyfile holds the Caddyfile glue of caddymesh that cannot live
// on a module: the `mesh` global option, the handler directives and their
// order, and the golden adapt tests of every caddymesh directive and option.
package caddyfile

import (
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddymesh/caddymesh/discovery"
	"github.com/caddymesh/caddymesh/gateway"
	"github.com/caddymesh/caddymesh/middleware"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("mesh", parseMesh)
	// A sidecar's or gateway's inbound chain, so that no `order` option is
	// needed: who calls (mesh_identity), which service they call
	// (mesh_service), how much (mesh_limit), and whether what it wraps is
	// failing (mesh_breaker), after Caddy's own authentication and before
	// the handlers that answer, such as reverse_proxy.
	for _, directive := range []string{"mesh_identity", "mesh_service", "mesh_limit", "mesh_breaker"} {
		registerHandler(directive, httpcaddyfile.Before, "request_header")
	}
	// mesh_router answers, as reverse_proxy does: after handle and route
	// blocks, and before the handlers that answer (abort, error, respond,
	// reverse_proxy, file_server...), which, with `fallback next`, answer
	// what it does not route.
	registerHandler("mesh_router", httpcaddyfile.Before, "abort")
}

// handlers make the handler of each caddymesh directive.
var handlers = map[string]func() handler{
	"mesh_identity": func() handler { return new(middleware.Identity) },
	"mesh_service":  func() handler { return new(gateway.MeshService) },
	"mesh_limit":    func() handler { return new(middleware.Limit) },
	"mesh_breaker":  func() handler { return new(middleware.Breaker) },
	"mesh_router":   func() handler { return new(gateway.Router) },
}

// handler is a middleware that reads its own Caddyfile tokens.
type handler interface {
	caddyhttp.MiddlewareHandler
	caddyfile.Unmarshaler
}

// registerHandler registers directive, placed relative to a standard
// directive; directives placed before the same one come in the order they
// are registered.
func registerHandler(directive string, position httpcaddyfile.Positional, anchor string) {
	create := handlers[directive]
	httpcaddyfile.RegisterHandlerDirective(directive, func(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
		m := create()
		return m, m.UnmarshalCaddyfile(h.Dispenser)
	})
	httpcaddyfile.RegisterDirectiveOrder(directive, position, anchor)
}

// parseMesh sets up the mesh app from the `mesh` global option:
//
//	{
//	    mesh {
//	        consul { ... }
//	    }
//	}
func parseMesh(d *caddyfile.Dispenser, existing any) (any, error) {
	if existing != nil {
		return nil, d.Err("the mesh global option may appear only once")
	}
	app := new(discovery.App)
	if err := app.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	return httpcaddyfile.App{Name: "mesh", Value: caddyconfig.JSON(app, nil)}, nil
}
