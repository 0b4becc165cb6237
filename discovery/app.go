package discovery

import (
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"go.uber.org/zap"

	"github.com/caddymesh/caddymesh/internal/consul"
	"github.com/caddymesh/caddymesh/internal/meshapp"
	"github.com/caddymesh/caddymesh/internal/urlpath"
	"github.com/caddymesh/caddymesh/internal/validate"
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

	// What to do with the escaped slashes (%2F, %5C) of a request's path
	// when normalizing it, before mesh_identity's intentions, mesh_router
	// or mesh_service decide on it. As in Consul's mesh config entry
	// (HTTP.Incoming.RequestNormalization.PathWithEscapedSlashesAction):
	// KEEP_UNCHANGED; REJECT_REQUEST, answering 400; UNESCAPE_AND_REDIRECT,
	// answering 307 with the path they are unescaped in; or
	// UNESCAPE_AND_FORWARD. Default: IMPLEMENTATION_SPECIFIC_DEFAULT, which
	// is KEEP_UNCHANGED, as in Consul.
	PathWithEscapedSlashesAction string `json:"path_with_escaped_slashes_action,omitempty"`

	conn   consul.Connection
	held   atomic.Bool // whether this config holds its registrations
	logger *zap.Logger

	escapedSlashes urlpath.EscapedSlashes
	validated      validate.Once // Validate's answer, for Caddy's call after Provision
}

// CaddyModule returns the Caddy module information.
func (*App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "mesh",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision validates the settings, so that a bad one fails here even when
// no source uses it yet, and ties registrations to Caddy's start and stop.
func (a *App) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	if err := a.Validate(); err != nil {
		return err
	}
	a.escapedSlashes, _ = urlpath.ParseEscapedSlashes(a.PathWithEscapedSlashesAction) // valid
	var err error
	if a.conn, err = consul.Resolve(a.Consul); err != nil {
		return err
	}
	if err := registerMetrics(ctx); err != nil {
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
	return consul.UseEvents(ctx)
}

// Validate rejects bad values, naming the field and the value. Provision
// calls it before acting on them; its checks run once.
func (a *App) Validate() error { return a.validated.Do(a.check) }

// check makes Validate's checks.
func (a *App) check() error {
	if _, err := urlpath.ParseEscapedSlashes(a.PathWithEscapedSlashesAction); err != nil {
		return fmt.Errorf("mesh: path_with_escaped_slashes_action %w", err)
	}
	for _, r := range a.Register {
		if err := r.validate(); err != nil {
			return err
		}
	}
	return nil
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
	return errors.Join(events.On("started", consul.OnEvent(a.register)), events.On("stopping", consul.OnEvent(a.deregister)))
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

// EscapedSlashes says what path normalization does with escaped slashes,
// for the modules that decide on paths.
func (a *App) EscapedSlashes() urlpath.EscapedSlashes { return a.escapedSlashes }

// meshApp returns the config's mesh app, or nil when it has none.
func meshApp(ctx caddy.Context) (*App, error) {
	app, err := meshapp.Get(ctx)
	if app == nil || err != nil {
		return nil, err
	}
	return app.(*App), nil
}

// ConsulSettings returns the app's Consul settings, which every module's
// own consul block overrides (consul.AppSettings).
func (a *App) ConsulSettings() *ConsulConfig { return a.Consul }

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.Validator    = (*App)(nil)
	_ consul.AppSettings = (*App)(nil)
)
