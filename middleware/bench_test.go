package middleware

import (
	"net/http"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// benchmarkHandlers returns caddymesh's handlers, set up as a sidecar uses
// them (per-caller keys), and Caddy's vars handler, setting one variable:
// the floor of what a Caddy middleware costs.
func benchmarkHandlers(b testing.TB) map[string]caddyhttp.MiddlewareHandler {
	const perCaller = "{http.vars.mesh_caller}"
	vars := caddyhttp.VarsMiddleware{"caller": "web"}
	return map[string]caddyhttp.MiddlewareHandler{
		"vars": vars,
		"mesh_identity": newIdentity(b, &Identity{
			From:  []IdentitySource{{Source: "header", Header: "X-Mesh-Caller", Trusted: []string{"10.0.0.0/8"}}},
			Allow: []string{"web"},
		}),
		"mesh_limit":   limitAt(b, &Limit{Key: perCaller, Rate: "1e9/s", Burst: 1_000_000_000, Concurrency: 1_000_000}, time.Now()),
		"mesh_breaker": newBreaker(b, &Breaker{Key: perCaller}),
	}
}

// allowedRequest is a request each handler of benchmarkHandlers lets
// through, and the function that makes it so again before each reuse:
// mesh_identity removes the identity header.
func allowedRequest() (*http.Request, func()) {
	r := fromPeer("10.0.0.1:5000", "web")
	caddyhttp.SetVar(r.Context(), CallerVar, "web")
	caller := r.Header["X-Mesh-Caller"]
	return r, func() { r.Header["X-Mesh-Caller"] = caller }
}

var noop = caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })

func TestAllowPathsDoNotAllocate(t *testing.T) {
	for name, h := range benchmarkHandlers(t) {
		if name == "vars" || (name == "mesh_breaker" && raceEnabled) { // the race detector makes sync.Pool drop items
			continue
		}
		r, reset := allowedRequest()
		w := new(discard)
		if err := h.ServeHTTP(w, r, noop); err != nil { // the first request of a caller may set things up
			t.Fatalf("%s: %v", name, err)
		}
		if allocs := testing.AllocsPerRun(1000, func() { reset(); h.ServeHTTP(w, r, noop) }); allocs != 0 {
			t.Errorf("%s: %v allocations per request let through, want 0", name, allocs)
		}
	}
}

// BenchmarkHandler measures one request through a handler on its allow
// path, serially and from parallel goroutines, beside Caddy's vars
// handler. Compare them with benchstat -col /handler.
func BenchmarkHandler(b *testing.B) {
	handlers := benchmarkHandlers(b)
	for _, name := range []string{"vars", "mesh_identity", "mesh_limit", "mesh_breaker"} {
		h := handlers[name]
		b.Run("handler="+name+"/mode=serial", func(b *testing.B) {
			r, reset := allowedRequest()
			w := new(discard)
			b.ReportAllocs()
			for b.Loop() {
				reset()
				if err := h.ServeHTTP(w, r, noop); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("handler="+name+"/mode=parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				r, reset := allowedRequest()
				w := new(discard)
				for pb.Next() {
					reset()
					if err := h.ServeHTTP(w, r, noop); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
