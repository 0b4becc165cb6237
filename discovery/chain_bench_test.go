package discovery

import (
	"fmt"
	"net/http"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"

	"github.com/caddymesh/caddymesh/internal/consul"
	"github.com/caddymesh/caddymesh/internal/pool"
)

// The chains here are written in the shape Consul compiles them (the
// tests in chain_test.go take theirs from a real agent): the default chain
// of a service without config entries, and a router of five routes in
// front of a 90/10 splitter over two subsets.

func resolverNode(target string) *consul.ChainNode {
	return &consul.ChainNode{Type: api.DiscoveryGraphNodeTypeResolver, Name: target, Resolver: &consul.ChainResolver{Target: target}}
}

func defaultChain() *consul.CompiledChain {
	const target = "web.default.default.dc1"
	return &consul.CompiledChain{ServiceName: "web", Datacenter: "dc1", Default: true, StartNode: "resolver:" + target,
		Nodes:   map[string]*consul.ChainNode{"resolver:" + target: resolverNode(target)},
		Targets: map[string]*consul.ChainTarget{target: {ID: target, Service: "web", Datacenter: "dc1"}}}
}

func routedChain() *consul.CompiledChain {
	v1, v2 := "v1.web.default.default.dc1", "v2.web.default.default.dc1"
	route := func(m api.ServiceRouteHTTPMatch) *api.DiscoveryRoute {
		return &api.DiscoveryRoute{Definition: &api.ServiceRoute{Match: &api.ServiceRouteMatch{HTTP: &m}}, NextNode: "resolver:" + v2}
	}
	return &consul.CompiledChain{ServiceName: "web", Datacenter: "dc1", StartNode: "router:web",
		Nodes: map[string]*consul.ChainNode{
			"router:web": {Type: api.DiscoveryGraphNodeTypeRouter, Name: "web", Routes: []*api.DiscoveryRoute{
				route(api.ServiceRouteHTTPMatch{PathPrefix: "/admin"}),
				route(api.ServiceRouteHTTPMatch{Header: []api.ServiceRouteHTTPMatchHeader{{Name: "x-canary", Exact: "1"}}}),
				route(api.ServiceRouteHTTPMatch{QueryParam: []api.ServiceRouteHTTPMatchQueryParam{{Name: "beta", Present: true}}}),
				route(api.ServiceRouteHTTPMatch{Methods: []string{"POST", "DELETE"}}),
				{Definition: &api.ServiceRoute{}, NextNode: "splitter:web"},
			}},
			"splitter:web": {Type: api.DiscoveryGraphNodeTypeSplitter, Name: "web", Splits: []*consul.ChainSplit{
				{Weight: 90, NextNode: "resolver:" + v1}, {Weight: 10, NextNode: "resolver:" + v2},
			}},
			"resolver:" + v1: resolverNode(v1),
			"resolver:" + v2: resolverNode(v2),
		},
		Targets: map[string]*consul.ChainTarget{
			v1: {ID: v1, Service: "web", ServiceSubset: "v1", Datacenter: "dc1"},
			v2: {ID: v2, Service: "web", ServiceSubset: "v2", Datacenter: "dc1"},
		}}
}

// chainSource is a source following chain, each of whose targets has the
// instances named.
func chainSource(t testing.TB, chain *consul.CompiledChain, names []string) *ConsulUpstreams {
	ev, err := compileChain(chain, func(*consul.ChainTarget) (targetPool, error) {
		return &serviceWatch{service: "web", watchers: []*consul.HealthWatch{answered(names)}, logger: zap.NewNop()}, nil
	}, chainRequests)
	if err != nil {
		t.Fatal(err)
	}
	f := &chainFollower{key: consul.ChainKey{Service: "web"}}
	ev.owner = f
	f.current.Store(ev)
	return &ConsulUpstreams{Service: "web", chain: f}
}

// newAttempt makes r a new request, not the retry of its last attempt.
func newAttempt(r *http.Request) {
	caddyhttp.SetVar(r.Context(), chainLegVar, nil)
	pool.Attach(r, nil)
}

func TestChainGetUpstreamsAllocatesAsWithoutChain(t *testing.T) {
	names := []string{"a", "b", "c"}
	for name, cu := range map[string]*ConsulUpstreams{
		"default chain": chainSource(t, defaultChain(), names),
		"routed chain":  chainSource(t, routedChain(), names),
	} {
		r := newRequest()
		if upstreams, err := cu.GetUpstreams(r); err != nil || len(upstreams) != 3 || pool.FromRequest(r) == nil {
			t.Fatalf("%s: %d upstreams (%v), snapshot attached %v; want 3 and the snapshot", name, len(upstreams), err, pool.FromRequest(r) != nil)
		}
		if allocs := testing.AllocsPerRun(100, func() { newAttempt(r); cu.GetUpstreams(r) }); allocs != 2 {
			t.Errorf("%s: GetUpstreams allocates %v times, want 2 (the upstreams, as without chain)", name, allocs)
		}
	}
}

func TestChainRetryKeepsTheLegOfTheFirstAttempt(t *testing.T) {
	cu := chainSource(t, routedChain(), []string{"a"})
	r := newRequest()
	cu.GetUpstreams(r)
	first, _ := caddyhttp.GetVar(r.Context(), chainLegVar).(*chainLeg)
	if first == nil {
		t.Fatal("no leg recorded in the request")
	}
	for range 50 { // 10% of new rolls would pick the other leg
		pool.Attach(r, nil)
		cu.GetUpstreams(r)
		if leg, _ := caddyhttp.GetVar(r.Context(), chainLegVar).(*chainLeg); leg != first {
			t.Fatal("a retry chose another leg than its first attempt")
		}
	}
}

// Two chain sources on one request (a chain reverse_proxy in handle_errors
// after another): the second evaluates its own chain, not the leg the
// first chose.
func TestChainLegIsPerSource(t *testing.T) {
	first, second := chainSource(t, routedChain(), []string{"a"}), chainSource(t, routedChain(), []string{"b"})
	r := newRequest()
	if upstreams, err := first.GetUpstreams(r); err != nil || len(upstreams) != 1 || upstreams[0].Dial != instancesNamed("a")[0].Dial {
		t.Fatalf("the first source: %v, %v", upstreams, err)
	}
	pool.Attach(r, nil)
	upstreams, err := second.GetUpstreams(r)
	if err != nil || len(upstreams) != 1 || upstreams[0].Dial != instancesNamed("b")[0].Dial {
		t.Fatalf("the second source on the same request: %v, %v; want its own instance", upstreams, err)
	}
	pool.Attach(r, nil)
	if upstreams, _ := second.GetUpstreams(r); len(upstreams) != 1 || upstreams[0].Dial != instancesNamed("b")[0].Dial {
		t.Errorf("the second source's retry: %v", upstreams)
	}
}

// BenchmarkChainGetUpstreams measures GetUpstreams with chain beside
// without it: the default chain must cost within 10% of no chain.
func BenchmarkChainGetUpstreams(b *testing.B) {
	for _, n := range []int{3, 64} {
		names := instanceNames(n)
		b.Run(fmt.Sprintf("instances=%d/chain=none", n), func(b *testing.B) {
			cu, r := staticSource(answered(names)), newRequest()
			b.ReportAllocs()
			for b.Loop() {
				newAttempt(r)
				cu.GetUpstreams(r)
			}
		})
		for name, chain := range map[string]func() *consul.CompiledChain{"default": defaultChain, "routed": routedChain} {
			b.Run(fmt.Sprintf("instances=%d/chain=%s", n, name), func(b *testing.B) {
				cu, r := chainSource(b, chain(), names), newRequest()
				b.ReportAllocs()
				for b.Loop() {
					newAttempt(r)
					cu.GetUpstreams(r)
				}
			})
		}
	}
}

// BenchmarkChainEvaluate measures the evaluation alone: the routes in
// order, the split and the resolver, for a request that reaches the
// default route.
func BenchmarkChainEvaluate(b *testing.B) {
	cu := chainSource(b, routedChain(), []string{"a"})
	ev := cu.chain.current.Load()
	r := newRequest()
	r.URL.RawQuery = "page=2&sort=asc"
	b.ReportAllocs()
	for b.Loop() {
		route := ev.route(r, "/catalog/items")
		route.pick(4242).resolver.choose()
	}
}

// BenchmarkChainResponseHeaders measures mesh_chain around a response
// whose chain leg sets a response header.
func BenchmarkChainResponseHeaders(b *testing.B) {
	route := &chainRoute{response: compileHeaderOps(&api.HTTPHeaderModifiers{Set: map[string]string{"x-canary": "1"}})}
	leg := &chainLeg{route: route}
	r := newRequest()
	caddyhttp.SetVar(r.Context(), chainLegVar, leg)
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error {
		w.WriteHeader(http.StatusOK)
		return nil
	})
	w := &headerWriter{header: http.Header{}}
	var handler ChainResponseHeaders
	b.ReportAllocs()
	for b.Loop() {
		clear(w.header)
		handler.ServeHTTP(w, r, next)
	}
	if w.header.Get("X-Canary") != "1" {
		b.Fatal("the response header was not set")
	}
}

// headerWriter is a ResponseWriter that keeps only its header.
type headerWriter struct{ header http.Header }

func (w *headerWriter) Header() http.Header         { return w.header }
func (w *headerWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *headerWriter) WriteHeader(int)             {}
