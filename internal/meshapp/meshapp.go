// Package meshapp finds the mesh app of a config for the modules that
// read its shared settings, without importing the package that defines it.
package meshapp

import (
	"errors"
	"fmt"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddymesh/caddymesh/internal/urlpath"
)

// ID is the mesh app's module ID.
const ID = "mesh"

// Get returns the mesh app of ctx's config, provisioning it if need be;
// nil when the config has none.
func Get(ctx caddy.Context) (any, error) {
	app, err := ctx.AppIfConfigured(ID)
	if errors.Is(err, caddy.ErrNotConfigured) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("loading the mesh app: %w", err)
	}
	return app, nil
}

// EscapedSlashes returns what the mesh app says path normalization does
// with escaped slashes: Consul's default when the config has no mesh app.
func EscapedSlashes(ctx caddy.Context) (urlpath.EscapedSlashes, error) {
	app, err := Get(ctx)
	if app == nil || err != nil {
		return urlpath.KeepUnchanged, err
	}
	setting, ok := app.(interface{ EscapedSlashes() urlpath.EscapedSlashes })
	if !ok {
		return 0, fmt.Errorf("the mesh app (%T) does not say how paths are normalized", app)
	}
	return setting.EscapedSlashes(), nil
}
