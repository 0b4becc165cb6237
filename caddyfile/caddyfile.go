// Package caddyfile holds the Caddyfile glue of caddymesh that cannot live
// on a module: the `mesh` global option, and the golden adapt tests of every
// caddymesh directive and option.
package caddyfile

import (
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"

	"github.com/caddymesh/caddymesh/discovery"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("mesh", parseMesh)
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
