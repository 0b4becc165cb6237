package middleware_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddymesh/caddymesh/internal/consul"
	"github.com/caddymesh/caddymesh/internal/meshtest"
)

// failingApp is an application on loopback that fails on demand.
type failingApp struct {
	failing atomic.Bool
	hits    atomic.Int64
	addr    string
}

func startFailingApp(t *testing.T) *failingApp {
	app := new(failingApp)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		app.hits.Add(1)
		if app.failing.Load() {
			http.Error(w, "failing", http.StatusInternalServerError)
		}
	}))
	t.Cleanup(srv.Close)
	app.addr = srv.Listener.Addr().String()
	return app
}

func expectBreakerState(t *testing.T, state string) {
	t.Helper()
	want := `caddy_mesh_breaker_state{key="orders.internal"} ` + state
	meshtest.Eventually(t, 10*time.Second, "metric "+want, func() bool {
		_, metrics := meshtest.Get(meshtest.AdminURL() + "/metrics")
		return strings.Contains(metrics, want)
	})
}

func TestBreakerThroughCaddy(t *testing.T) {
	app := startFailingApp(t)
	port := meshtest.FreePort()
	meshtest.Load(t, fmt.Sprintf(`{
		%s,
		"apps": {
			"events": {"subscriptions": [{
				"events": ["mesh.breaker_open", "mesh.breaker_closed"],
				"handlers": [{"handler": "mesh_test_recorder"}]
			}]},
			"http": {"servers": {"s": {"listen": [":%d"], "routes": [{"handle": [
				{"handler": "mesh_breaker", "key": "{http.request.host}", "consecutive_failures": 3,
				 "open_for": "1s", "half_open_requests": 2},
				{"handler": "reverse_proxy", "upstreams": [{"dial": %q}]}
			]}]}}}
		}
	}`, meshtest.AdminJSON(), port, app.addr), "json")
	send := func() (int, string) {
		req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/", port), nil)
		req.Host = "orders.internal"
		resp, err := meshtest.Client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("Retry-After")
	}

	for range 10 {
		if status, _ := send(); status != 200 {
			t.Fatalf("healthy app: %d", status)
		}
	}
	expectBreakerState(t, "0")
	app.failing.Store(true)
	for range 3 {
		if status, _ := send(); status != 500 {
			t.Fatalf("failing app, closed circuit: %d, want the app's 500", status)
		}
	}
	meshtest.AwaitEvent(t, "mesh.breaker_open", "key", "orders.internal")
	expectBreakerState(t, "1")
	hits := app.hits.Load()
	for range 20 {
		if status, retryAfter := send(); status != 503 || retryAfter != "1" {
			t.Fatalf("open circuit: %d with Retry-After %q, want 503 with 1", status, retryAfter)
		}
	}
	if app.hits.Load() != hits {
		t.Errorf("the open circuit let %d requests reach the app", app.hits.Load()-hits)
	}

	app.failing.Store(false)
	meshtest.Eventually(t, 10*time.Second, "the probes to close the circuit", func() bool {
		status, _ := send()
		return status == 200
	})
	send() // the second probe
	meshtest.AwaitEvent(t, "mesh.breaker_closed", "key", "orders.internal")
	expectBreakerState(t, "0")
}

func TestLimitThroughCaddy(t *testing.T) {
	port := meshtest.FreePort()
	meshtest.Load(t, fmt.Sprintf(`{
	%s
}
:%d {
	mesh_identity {
		from header X-Mesh-Caller {
			trusted 127.0.0.1/32
		}
	}
	mesh_limit {http.vars.mesh_caller} {
		rate  3/m
		burst 3
	}
	respond "ok"
}`, meshtest.Globals(), port), "caddyfile")
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	for i := range 3 {
		if status, body := getAs(url, "web", "GET"); status != 200 {
			t.Fatalf("web's request %d: %d %s, want 200 within the burst", i+1, status, body)
		}
	}
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("X-Mesh-Caller", "web")
	resp, err := meshtest.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "20" {
		t.Errorf("web over its rate: %d with Retry-After %q, want 429 with 20 (a token every 20s)", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if status, _ := getAs(url, "billing", "GET"); status != 200 {
		t.Errorf("billing, with a bucket of its own: %d, want 200", status)
	}
}

// TestNoGoroutineOutlivesItsConfig loads a config with every handler, and
// then an empty one: the handlers' sweepers and the intentions watch must
// stop with the config they belong to.
func TestNoGoroutineOutlivesItsConfig(t *testing.T) {
	const sweeper, watch = "middleware.(*perKey[...]).sweep", consul.PollLoop
	port := meshtest.FreePort()
	meshtest.Load(t, fmt.Sprintf("{\n\t%s\n}\n", meshtest.Globals())+
		intentionsSite(port, "address "+agent.Addr, "")+fmt.Sprintf(`:%d {
	mesh_limit {
		concurrency 10
	}
	mesh_breaker
	respond "ok"
}`, meshtest.FreePort()), "caddyfile")
	getAs(fmt.Sprintf("http://127.0.0.1:%d/", port), "web", "GET")
	if meshtest.Goroutines(sweeper) != 2 || meshtest.Goroutines(watch) != 1 {
		t.Fatalf("%d sweepers and %d intentions watches running, want 2 and 1:\n%s",
			meshtest.Goroutines(sweeper), meshtest.Goroutines(watch), meshtest.GoroutineSummary())
	}
	meshtest.Load(t, fmt.Sprintf("{\n\t%s\n}\n", meshtest.Globals()), "caddyfile")
	meshtest.Eventually(t, 10*time.Second, "the goroutines to stop", func() bool {
		return meshtest.Goroutines(sweeper) == 0 && meshtest.Goroutines(watch) == 0
	})
}
