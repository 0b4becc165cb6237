package consul

import (
	"context"
	"errors"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
)

// Events the mesh emits through Caddy's events app, each with the service
// and datacenter in its data, so that users can hook them (exec, webhooks).
const (
	// EventUpstreamsChanged: a watched service's instances changed; data
	// also has the healthy and total counts.
	EventUpstreamsChanged = "mesh.upstreams_changed"
	// EventConsulUnreachable: a watch's queries started failing; data also
	// has the error.
	EventConsulUnreachable = "mesh.consul_unreachable"
	// EventConsulRecovered: a watch's queries succeed again; data also has
	// the outage's duration.
	EventConsulRecovered = "mesh.consul_recovered"
	// EventHoldingLast: Consul's answer dropped every healthy instance of a
	// watched service at once, and the last ones are kept for hold_last;
	// data also has how many are held and until when.
	EventHoldingLast = "mesh.holding_last"
)

// eventSink is an events app and the context to emit through it with.
type eventSink struct {
	ctx caddy.Context
	app *caddyevents.App
}

// events is the events app of the config started last. Watchers are shared
// by configs, so they emit through it rather than through the config that
// started them.
var events atomic.Pointer[eventSink]

// UseEvents makes watches emit through the events app of ctx's config once
// that config has started (an events app binds its subscriptions when it
// starts), or not at all when the config has no events app.
func UseEvents(ctx caddy.Context) error {
	app, err := ctx.AppIfConfigured("events")
	if errors.Is(err, caddy.ErrNotConfigured) {
		events.Store(nil)
		return nil
	}
	if err != nil {
		return err
	}
	sink := &eventSink{ctx: ctx, app: app.(*caddyevents.App)}
	return sink.app.On("started", OnEvent(func() { events.Store(sink) }))
}

// Emit emits an event, if anything can hear it.
func Emit(name string, data map[string]any) {
	if sink := events.Load(); sink != nil {
		sink.app.Emit(sink.ctx, name, data)
	}
}

// OnEvent is an events handler that calls a function.
type OnEvent func()

// Handle implements caddyevents.Handler.
func (f OnEvent) Handle(context.Context, caddy.Event) error {
	f()
	return nil
}

// Interface guards
var _ caddyevents.Handler = OnEvent(nil)
