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
	"github.com/caddymesh/caddymesh/middleware"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("mesh", parseMesh)
	// A sidecar's inbound chain, so that no `order` option is needed: who
	// calls (mesh_identity), how much (mesh_limit), and whether what it
	// wraps is failing (mesh_breaker), after Caddy's own authentication and
	// before the handlers that answer, such as reverse_proxy.
	registerHandler("mesh_identity", func() handler { return new(middleware.Identity) })
	registerHandler("mesh_limit", func() handler { return new(middleware.Limit) })
	registerHandler("mesh_breaker", func() handler { return new(middleware.Breaker) })
}

// handler is a middleware that reads its own Caddyfile tokens.
type handler interface {
	caddyhttp.MiddlewareHandler
	caddyfile.Unmarshaler
}

// registerHandler registers directive as a handler made by create, placed
// before request_header; directives registered later come after earlier
// ones.
func registerHandler(directive string, create func() handler) {
	httpcaddyfile.RegisterHandlerDirective(directive, func(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
		m := create()
		return m, m.UnmarshalCaddyfile(h.Dispenser)
	})
	httpcaddyfile.RegisterDirectiveOrder(directive, httpcaddyfile.Before, "request_header")
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
