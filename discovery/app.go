package discovery

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(new(App))
}

// App is the mesh app: settings that every caddymesh module shares, and the
// services this Caddy registers in Consul. Its Caddyfile form is the `mesh`
// global option.
type App struct {
	// How to reach Consul. Each consul upstream source uses these settings
	// unless its own consul block overrides them; registrations use them.
	Consul *ConsulConfig `json:"consul,omitempty"`

	// Services this Caddy fronts, registered in Consul once Caddy serves
	// them. When Caddy stops, or a new config drops one, it is taken out of
	// Consul first, then Caddy waits its drain before it stops serving. A
	// reload that keeps a registration leaves it alone in Consul. When
	// Consul is unreachable, registering is retried in the background.
	Register []*Registration `json:"register,omitempty"`

	conn   connection
	held   atomic.Bool // whether this config holds its registrations
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (*App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "mesh",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision checks the settings, so that a bad one fails here even when no
// source uses it yet, and ties registrations to Caddy's start and stop.
func (a *App) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	var err error
	if a.conn, err = resolveConnection(a.Consul); err != nil {
		return err
	}
	if err := metrics.register(ctx); err != nil {
		return err
	}
	ids := make(map[string]bool)
	for _, r := range a.Register {
		if err := r.prepare(); err != nil {
			return err
		}
		if ids[r.ID] {
			return fmt.Errorf("mesh register %s: id %q is registered twice", r.Name, r.ID)
		}
		ids[r.ID] = true
	}
	if len(a.Register) > 0 {
		if err := a.bindToLifecycle(ctx); err != nil {
			return err
		}
	}
	return useEvents(ctx)
}

// bindToLifecycle registers once every app of the config has started (so
// that Caddy is listening), and deregisters and drains when Caddy begins to
// stop the config, before any app stops (so that it still serves while
// callers move away). Caddy emits both events itself.
func (a *App) bindToLifecycle(ctx caddy.Context) error {
	app, err := ctx.App("events")
	if err != nil {
		return fmt.Errorf("mesh register: loading the events app: %v", err)
	}
	events := app.(*caddyevents.App)
	return errors.Join(events.On("started", onEvent(a.register)), events.On("stopping", onEvent(a.deregister)))
}

// Start does nothing: registering waits for the "started" event.
func (a *App) Start() error { return nil }

// Stop deregisters, if the "stopping" event did not: Caddy stops the apps
// of a config that failed to start without emitting it.
func (a *App) Stop() error {
	a.deregister()
	return nil
}

func (a *App) register() {
	if !a.held.CompareAndSwap(false, true) {
		return
	}
	if err := acquireRegistrations(a.Register, a.conn); err != nil {
		a.logger.Error("registering in consul", zap.Error(err))
	}
}

func (a *App) deregister() {
	if a.held.CompareAndSwap(true, false) {
		releaseRegistrations(a.Register)
	}
}

// onEvent is an events handler that calls a function.
type onEvent func()

// Handle implements caddyevents.Handler.
func (f onEvent) Handle(context.Context, caddy.Event) error {
	f()
	return nil
}

// appConsulConfig returns the mesh app's Consul settings, or nil when the
// config has no mesh app.
func appConsulConfig(ctx caddy.Context) (*ConsulConfig, error) {
	app, err := meshApp(ctx)
	if app == nil || err != nil {
		return nil, err
	}
	return app.Consul, nil
}

// Interface guards
var (
	_ caddy.App           = (*App)(nil)
	_ caddy.Provisioner   = (*App)(nil)
	_ caddyevents.Handler = onEvent(nil)
)
