package gateway_test

import (
	"testing"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddymesh/caddymesh"
	"github.com/caddymesh/caddymesh/internal/consul"
	"github.com/caddymesh/caddymesh/internal/consultest"
	"github.com/caddymesh/caddymesh/internal/meshtest"
)

// agent is the real Consul dev agent of this package's tests.
var agent *consultest.Agent

func TestMain(m *testing.M) { meshtest.MainWithConsul(m, &agent) }

// serve loads a config whose mesh app points at agent, with one site on a
// free port; it returns the site's URL.
func serve(t *testing.T, site string) string { return meshtest.Serve(t, agent.Addr, site) }

// propagation bounds how long a change in Consul takes to reach traffic.
const propagation = meshtest.Propagation

// backends starts named backends and registers each as an instance of
// service, with the given check status (passing when absent).
func backends(t *testing.T, service string, statuses map[string]string, names ...string) map[string]*meshtest.Backend {
	return meshtest.Backends(t, agent, service, statuses, names...)
}

// reached and awaitReached are meshtest's.
var reached, awaitReached = meshtest.Reached, meshtest.AwaitReached

// watchLoop names a watch's goroutine, for the tests counting them.
const watchLoop = consul.PollLoop

// adminGet and settledGoroutines are meshtest's.
var adminGet, settledGoroutines = meshtest.AdminGet, meshtest.SettledGoroutines
