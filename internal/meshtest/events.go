package meshtest

import (
	"context"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// eventRecorder is the events handler mesh_test_recorder, for tests'
// configs: it records the events it handles for AwaitEvent. It is not in
// a Caddy built with caddymesh.
type eventRecorder struct{}

var recorded = make(chan caddy.Event, 1000)

func init() { caddy.RegisterModule(eventRecorder{}) }

// CaddyModule returns the Caddy module information.
func (eventRecorder) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "events.handlers.mesh_test_recorder", New: func() caddy.Module { return new(eventRecorder) }}
}

// Handle records e.
func (eventRecorder) Handle(_ context.Context, e caddy.Event) error {
	recorded <- e
	return nil
}

// AwaitEvent waits for an event named name, whose data has value at key,
// among those mesh_test_recorder handled, and skips the others.
func AwaitEvent(t testing.TB, name, key string, value any) caddy.Event {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case e := <-recorded:
			if e.Name() == name && e.Data[key] == value {
				return e
			}
		case <-timeout:
			t.Fatalf("no %s event with %s %v", name, key, value)
		}
	}
}
