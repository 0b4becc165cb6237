package gateway

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddymesh/caddymesh/internal/consul"
	"github.com/caddymesh/caddymesh/internal/pool"
	"github.com/caddymesh/caddymesh/internal/reqkey"
)

// noopHandler is the next handler, which does nothing.
var noopHandler = caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })

// discardWriter is a response writer that keeps nothing.
type discardWriter struct{ header http.Header }

func (w *discardWriter) Header() http.Header {
	if w.header == nil {
		w.header = make(http.Header)
	}
	return w.header
}
func (*discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (*discardWriter) WriteHeader(int)             {}

// gatewayRequest is a request as Caddy's server hands it to handlers:
// with its variable table and replacer.
func gatewayRequest(host, path string) *http.Request {
	r := newRequest()
	r.Host, r.URL.Path = host, path
	return r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
}

// serviceGate is a mesh_service handler over a catalog of n services, as
// a gateway in front of /<service>/ sets it up.
func serviceGate(n int) *MeshService {
	s := &MeshService{Service: "{http.request.uri.path.0}", AllowServices: []string{"shop-*", "greeter"}, StripPath: true}
	s.name = reqkey.Compile(s.Service)
	services := map[string][]string{"greeter": {"v2"}}
	for i := range n - 1 {
		services[fmt.Sprintf("svc-%d", i)] = []string{"v1"}
	}
	s.catalog = consul.NewFixedCatalog(services)
	return s
}

// routerRequest is a request mesh_router has routed to a route with the
// instances named.
func routerRequest(names []string) *http.Request {
	r := newRequest()
	caddyhttp.SetVar(r.Context(), routeVar, &routeEntry{Service: "web", instances: pool.NewSnapshot(instancesNamed(names...))})
	return r
}

// letsThroughWithoutAllocating checks that gate lets a request for path
// through with no allocation.
func letsThroughWithoutAllocating(t *testing.T, gate *MeshService, path string) {
	t.Helper()
	r, w := gatewayRequest("", path), new(discardWriter)
	if allocs := testing.AllocsPerRun(100, func() {
		r.URL.Path = path
		if err := gate.ServeHTTP(w, r, noopHandler); err != nil {
			t.Fatal(err)
		}
	}); allocs != 0 {
		t.Errorf("mesh_service allocates %v times per request let through, want 0", allocs)
	}
}

func TestGatewayRequestPathsDoNotAllocate(t *testing.T) {
	letsThroughWithoutAllocating(t, serviceGate(100), "/greeter/hello")
	table := routesOnHosts(256)
	if allocs := testing.AllocsPerRun(100, func() { table.match("s128.example.com", false, "/api/orders") }); allocs != 0 {
		t.Errorf("matching a route allocates %v times, want 0", allocs)
	}
	routed := routerRequest([]string{"a", "b", "c"})
	if upstreams, err := (routeUpstreams{}).GetUpstreams(routed); err != nil || len(upstreams) != 3 {
		t.Fatalf("mesh_router: %d upstreams (%v), want 3", len(upstreams), err)
	}
	if allocs := testing.AllocsPerRun(100, func() { routeUpstreams{}.GetUpstreams(routed) }); allocs != 2 {
		t.Errorf("mesh_router: GetUpstreams allocates %v times, want 2, as the consul source of one service does", allocs)
	}
}

// BenchmarkGetUpstreams measures the per-request cost of mesh_router's
// upstream source, at the numbers of instances of the consul source's
// benchmark (discovery), which it matches. Compare them with benchstat
// -col /source.
func BenchmarkGetUpstreams(b *testing.B) {
	for _, n := range []int{3, 64, 256} {
		b.Run(fmt.Sprintf("instances=%d/source=mesh_router", n), func(b *testing.B) {
			r := routerRequest(instanceNames(n))
			b.ReportAllocs()
			for b.Loop() {
				routeUpstreams{}.GetUpstreams(r)
			}
		})
	}
}

// instanceNames returns n instance names, as the consul source's
// benchmark has them: 10.0.0.0, 10.0.0.1...
func instanceNames(n int) []string {
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("10.0.%d.%d", i/256, i%256)
	}
	return names
}

// instancesNamed returns an instance for each id, on port 80 of it.
func instancesNamed(ids ...string) []pool.Instance {
	out := make([]pool.Instance, len(ids))
	for i, id := range ids {
		out[i] = pool.Instance{ID: id, Dial: id + ":80", Weight: 1}
	}
	return out
}

// newRequest returns a request carrying Caddy's variable table, as a
// request in a Caddy server does.
func newRequest() *http.Request {
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	return r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{}))
}

// BenchmarkServiceGate measures mesh_service letting a request through,
// over a catalog of 100 services, beside Caddy's vars handler setting one
// variable. Compare them with benchstat -col /handler.
func BenchmarkServiceGate(b *testing.B) {
	handlers := map[string]caddyhttp.MiddlewareHandler{
		"vars":         caddyhttp.VarsMiddleware{ServiceVar: "greeter"},
		"mesh_service": serviceGate(100),
	}
	for _, name := range []string{"vars", "mesh_service"} {
		b.Run("handler="+name, func(b *testing.B) {
			r, w := gatewayRequest("", "/greeter/hello"), new(discardWriter)
			b.ReportAllocs()
			for b.Loop() {
				r.URL.Path = "/greeter/hello" // stripped by the previous round
				if err := handlers[name].ServeHTTP(w, r, noopHandler); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// routesOnHosts is a table of n routes, each on its own host:
// s<i>.example.com/api.
func routesOnHosts(n int) *routeTable {
	declarations := make([]string, n)
	for i := range declarations {
		declarations[i] = fmt.Sprintf("s%d:s%d.example.com/api", i, i)
	}
	return table(declarations...)
}

// BenchmarkRouteMatch measures mesh_router's choice of a route among n,
// each on its own host, for a request to the middle one, beside its peer:
// the same routes written as Caddy routes, a host and a path matcher each,
// tried in order as Caddy tries a route list. Compare them with benchstat
// -col /router.
func BenchmarkRouteMatch(b *testing.B) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	for _, n := range []int{4, 64, 256} {
		host := fmt.Sprintf("s%d.example.com", n/2)
		b.Run(fmt.Sprintf("routes=%d/router=mesh_router", n), func(b *testing.B) {
			table := routesOnHosts(n)
			b.ReportAllocs()
			for b.Loop() {
				if table.match(host, false, "/api/orders") == nil {
					b.Fatal("no route")
				}
			}
		})
		b.Run(fmt.Sprintf("routes=%d/router=caddy-routes", n), func(b *testing.B) {
			routes := caddyRoutesOnHosts(b, ctx, n)
			r := gatewayRequest(host, "/api/orders")
			b.ReportAllocs()
			for b.Loop() {
				if firstMatch(b, routes, r) != n/2 {
					b.Fatal("not the route of the host")
				}
			}
		})
	}
}

// caddyRoutesOnHosts is routesOnHosts as Caddy's matcher sets.
func caddyRoutesOnHosts(b *testing.B, ctx caddy.Context, n int) []caddyhttp.MatcherSet {
	sets := make([]caddyhttp.MatcherSet, n)
	for i := range sets {
		host, path := caddyhttp.MatchHost{fmt.Sprintf("s%d.example.com", i)}, caddyhttp.MatchPath{"/api*"}
		if err := host.Provision(ctx); err != nil {
			b.Fatal(err)
		}
		if err := path.Provision(ctx); err != nil {
			b.Fatal(err)
		}
		sets[i] = caddyhttp.MatcherSet{host, path}
	}
	return sets
}

// firstMatch returns the index of the first set matching r, or -1.
func firstMatch(b *testing.B, sets []caddyhttp.MatcherSet, r *http.Request) int {
	for i, set := range sets {
		matched, err := set.MatchWithError(r)
		if err != nil {
			b.Fatal(err)
		}
		if matched {
			return i
		}
	}
	return -1
}
