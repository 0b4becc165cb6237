package consul

import (
	"fmt"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddymesh/caddymesh/internal/meshapp"
)

// AppSettings is what the mesh app offers every module that reaches
// Consul: the settings each module's own consul block overrides.
type AppSettings interface {
	// ConsulSettings returns the app's Consul settings; nil for none.
	ConsulSettings() *Config
}

// AppConfig returns the mesh app's Consul settings, or nil when the config
// has no mesh app.
func AppConfig(ctx caddy.Context) (*Config, error) {
	app, err := meshapp.Get(ctx)
	if app == nil || err != nil {
		return nil, err
	}
	settings, ok := app.(AppSettings)
	if !ok {
		return nil, fmt.Errorf("the mesh app (%T) has no Consul settings", app)
	}
	return settings.ConsulSettings(), nil
}

// Provision is the preamble of every module that watches Consul: it
// resolves own over the mesh app's settings, registers the watch metrics
// in ctx's registry, and makes the watches emit through ctx's events app.
func Provision(ctx caddy.Context, own *Config) (Connection, error) {
	appConsul, err := AppConfig(ctx)
	if err != nil {
		return Connection{}, err
	}
	conn, err := Resolve(own, appConsul)
	if err != nil {
		return Connection{}, err
	}
	if err := RegisterMetrics(ctx); err != nil {
		return Connection{}, err
	}
	return conn, UseEvents(ctx)
}
