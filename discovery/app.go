package discovery

import (
	"errors"
	"fmt"

	"github.com/caddyserver/caddy/v2"
)

func init() {
	caddy.RegisterModule(App{})
}

// App is the mesh app: settings that every caddymesh module shares. Its
// Caddyfile form is the `mesh` global option.
type App struct {
	// How to reach Consul. Each consul upstream source uses these settings
	// unless its own consul block overrides them.
	Consul *ConsulConfig `json:"consul,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "mesh",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision checks the Consul settings, so that a bad one fails here even
// when no source uses it yet.
func (a *App) Provision(caddy.Context) error {
	_, err := resolveConnection(a.Consul)
	return err
}

// Start does nothing yet: sources start their own watchers.
func (a *App) Start() error { return nil }

// Stop does nothing yet: sources stop their own watchers.
func (a *App) Stop() error { return nil }

// appConsulConfig returns the mesh app's Consul settings, or nil when the
// config has no mesh app.
func appConsulConfig(ctx caddy.Context) (*ConsulConfig, error) {
	app, err := ctx.AppIfConfigured("mesh")
	if errors.Is(err, caddy.ErrNotConfigured) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("consul upstreams: %w", err)
	}
	return app.(*App).Consul, nil
}

// Interface guards
var (
	_ caddy.App         = (*App)(nil)
	_ caddy.Provisioner = (*App)(nil)
)
