package discovery

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/miekg/dns"
	"go.uber.org/zap"

	"github.com/caddymesh/caddymesh/internal/consul"
	"github.com/caddymesh/caddymesh/internal/pool"
	"github.com/caddymesh/caddymesh/internal/reqkey"
)

func TestValidateNamesFieldAndValue(t *testing.T) {
	tests := []struct {
		name   string
		source *ConsulUpstreams
		want   []string
	}{
		{"empty service", &ConsulUpstreams{}, []string{"service is required"}},
		{"unknown health mode", &ConsulUpstreams{Service: "web", Health: "green"}, []string{"health", `"green"`}},
		{"unknown consistency", &ConsulUpstreams{Service: "web", Consistency: "eventual"}, []string{"consistency", `"eventual"`}},
		{"negative wait", &ConsulUpstreams{Service: "web", Wait: caddy.Duration(-time.Second)}, []string{"wait", "-1s"}},
		{"wait above 10m", &ConsulUpstreams{Service: "web", Wait: caddy.Duration(11 * time.Minute)}, []string{"wait", "11m0s", "10m0s"}},
		{"threshold above 100", &ConsulUpstreams{Service: "web", PanicThreshold: 101}, []string{"panic_threshold", "101"}},
		{"negative threshold", &ConsulUpstreams{Service: "web", PanicThreshold: -1}, []string{"panic_threshold", "-1"}},
		{"empty tag", &ConsulUpstreams{Service: "web", Tags: []string{""}}, []string{"tag", `""`}},
		{"tag with a backtick", &ConsulUpstreams{Service: "web", Tags: []string{"a`b"}}, []string{"tag", "a`b"}},
		{"filter that does not parse", &ConsulUpstreams{Service: "web", Filter: "Service.Tags contains"}, []string{"filter", `"Service.Tags contains"`}},
		{"filter on a field Consul does not have", &ConsulUpstreams{Service: "web", Filter: `Service.Nope == "x"`}, []string{"filter", `Selector "Service.Nope" is not valid`}},
		{"wait of a few nanoseconds", &ConsulUpstreams{Service: "web", Wait: 3}, []string{"wait 3ns: must be from 1s to 10m0s"}},
		{"idle_timeout of 2ns", &ConsulUpstreams{Service: "{path.0}", IdleTimeout: 2}, []string{"idle_timeout 2ns: must be from 100ms to 24h0m0s"}}, // divided by zero
		{"idle_timeout above a day", &ConsulUpstreams{Service: "{path.0}", IdleTimeout: caddy.Duration(25 * time.Hour)}, []string{"idle_timeout 25h0m0s"}},
		{"max_services above 65536", &ConsulUpstreams{Service: "{path.0}", MaxServices: 65537}, []string{"max_services 65537: must be from 1 to 65536"}},
		{"resolve_timeout above a minute", &ConsulUpstreams{Service: "{path.0}", ResolveTimeout: caddy.Duration(time.Hour)}, []string{"resolve_timeout 1h0m0s: must be from 1ms to 1m0s"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.source.Validate()
			if err == nil {
				t.Fatal("want an error")
			}
			for _, want := range tt.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %s", err, want)
				}
			}
		})
	}
}

func TestFullFilter(t *testing.T) {
	tests := []struct {
		tags   []string
		filter string
		want   string
	}{
		{nil, "", ""},
		{nil, `Service.Meta.version == "2"`, `Service.Meta.version == "2"`},
		{[]string{"v2"}, "", "`v2` in Service.Tags"},
		{[]string{"v2", `say "hi"`}, `Service.Meta.x != "y"`,
			"`v2` in Service.Tags and `say \"hi\"` in Service.Tags and (Service.Meta.x != \"y\")"},
	}
	for _, tt := range tests {
		cu := ConsulUpstreams{Tags: tt.tags, Filter: tt.filter}
		if got := cu.fullFilter(); got != tt.want {
			t.Errorf("tags %q filter %q: got %s, want %s", tt.tags, tt.filter, got, tt.want)
		}
	}
}

// answered returns a watcher that has answered with the given healthy
// instances and, besides them, the given unhealthy ones.
func answered(healthy []string, unhealthy ...string) *consul.HealthWatch {
	var a consul.Answer
	a.Healthy = pool.NewSnapshot(instancesNamed(healthy...))
	a.All = a.Healthy
	if len(unhealthy) > 0 {
		a.All = pool.NewSnapshot(instancesNamed(append(append([]string{}, healthy...), unhealthy...)...))
	}
	return consul.NewFixedHealthWatch(consul.HealthKey{Service: "web"}, &a)
}

// unanswered returns a watcher that has not answered yet.
func unanswered() *consul.HealthWatch {
	return consul.NewFixedHealthWatch(consul.HealthKey{Service: "web"}, nil)
}

// serviceVar is the variable mesh_service sets, which a source named by
// {http.vars.mesh_service} reads.
const serviceVar = "mesh_service"

// lazySource is a source named by {http.vars.mesh_service} that watches
// the service "web" already, answered with the instances named.
func lazySource(names []string) *ConsulUpstreams {
	ready := make(chan struct{})
	close(ready)
	watch := &serviceWatch{service: "web", watchers: []*consul.HealthWatch{answered(names)}}
	cu := &ConsulUpstreams{Service: "{http.vars." + serviceVar + "}", serviceName: reqkey.Compile("{http.vars." + serviceVar + "}")}
	cu.lazy = &lazyServices{source: cu}
	cu.lazy.byName.Store(&map[string]*lazyService{"web": {watch: watch, ready: ready}})
	return cu
}

func TestServiceNamesFromRequestsFollowTheNameRule(t *testing.T) {
	ls := lazySource([]string{"a"}).lazy
	for _, name := range []string{"../etc", "x y", "", "a..b", ".x"} {
		if watch := ls.get(newRequest(), name); watch != nil {
			t.Errorf("a watch for the invalid name %q", name)
		}
	}
	if n := len(*ls.byName.Load()); n != 1 {
		t.Errorf("%d services after requests for invalid names, want the 1 already watched", n)
	}
}

func TestSourceByNameDoesNotAllocateBeyondItsUpstreams(t *testing.T) {
	r, cu := newRequest(), lazySource([]string{"a", "b", "c"})
	caddyhttp.SetVar(r.Context(), serviceVar, "web")
	if upstreams, err := cu.GetUpstreams(r); err != nil || len(upstreams) != 3 {
		t.Fatalf("%d upstreams (%v), want 3", len(upstreams), err)
	}
	if allocs := testing.AllocsPerRun(100, func() { cu.GetUpstreams(r) }); allocs != 2 {
		t.Errorf("GetUpstreams allocates %v times, want 2, as the source of one named service does", allocs)
	}
}

// mustResolve returns the connection to the Consul at address.
func mustResolve(t testing.TB, address string) consul.Connection {
	t.Helper()
	conn, err := consul.Resolve(&ConsulConfig{Address: address})
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

func instancesNamed(ids ...string) []pool.Instance {
	out := make([]pool.Instance, len(ids))
	for i, id := range ids {
		out[i] = pool.Instance{ID: id, Dial: id + ":80", Weight: 1}
	}
	return out
}

func ids(s *pool.Snapshot) string {
	if s == nil {
		return "<no answer>"
	}
	var out []string
	for _, inst := range s.Instances {
		out = append(out, inst.ID)
	}
	return strings.Join(out, ",")
}

func TestChoose(t *testing.T) {
	tests := []struct {
		name      string
		threshold int
		watchers  []*consul.HealthWatch
		want      string
	}{
		{"no answer yet", 0, []*consul.HealthWatch{unanswered()}, "<no answer>"},
		{"healthy instances of the only datacenter", 0,
			[]*consul.HealthWatch{answered([]string{"a", "b"}, "c")}, "a,b"},
		{"the first datacenter with a healthy instance wins", 0,
			[]*consul.HealthWatch{answered(nil, "a"), answered([]string{"b"}), answered([]string{"c"})}, "b"},
		{"a datacenter that has not answered is skipped", 0,
			[]*consul.HealthWatch{unanswered(), answered([]string{"b"})}, "b"},
		{"no healthy instance anywhere gives an empty list", 0,
			[]*consul.HealthWatch{answered(nil, "a"), answered(nil, "b")}, ""},
		{"panic mode below the threshold serves all instances", 50,
			[]*consul.HealthWatch{answered([]string{"a"}, "b", "c")}, "a,b,c"},
		{"no panic at the threshold", 50,
			[]*consul.HealthWatch{answered([]string{"a", "b"}, "c", "d")}, "a,b"},
		{"panic mode with no healthy instance anywhere serves the first datacenter's", 10,
			[]*consul.HealthWatch{answered(nil), answered(nil, "b"), answered(nil, "c")}, "b"},
		{"failover wins over panic", 50,
			[]*consul.HealthWatch{answered(nil, "a"), answered([]string{"b"})}, "b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sw := &serviceWatch{service: "web", panicThreshold: tt.threshold, watchers: tt.watchers, logger: zap.NewNop()}
			if got := ids(sw.choose()); got != tt.want {
				t.Errorf("chose %q, want %q", got, tt.want)
			}
		})
	}
}

// staticSource is a source of the service web, as its watchers say.
func staticSource(watchers ...*consul.HealthWatch) *ConsulUpstreams {
	return &ConsulUpstreams{Service: "web", static: &serviceWatch{service: "web", watchers: watchers, logger: zap.NewNop()}}
}

// newRequest returns a request carrying Caddy's variable table, as a
// request in a Caddy server does.
func newRequest() *http.Request {
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	return r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{}))
}

func TestGetUpstreams(t *testing.T) {
	cu := staticSource(answered([]string{"a", "b"}))
	r := newRequest()
	first, err := cu.GetUpstreams(r)
	if err != nil {
		t.Fatal(err)
	}
	second, _ := cu.GetUpstreams(r)
	if len(first) != 2 || first[0].Dial != "a:80" || first[1].Dial != "b:80" {
		t.Fatalf("upstreams = %v, want a:80 b:80", first)
	}
	if first[0] == second[0] {
		t.Error("two calls returned the same Upstream value; Caddy writes into them per attempt")
	}
	snap := pool.FromRequest(r)
	if snap == nil || ids(snap) != "a,b" {
		t.Errorf("request carries snapshot %q, want the one behind the upstreams", ids(snap))
	}
	if allocs := testing.AllocsPerRun(100, func() { cu.GetUpstreams(r) }); allocs != 2 {
		t.Errorf("GetUpstreams allocates %v times, want 2 whatever the number of instances", allocs)
	}
}

func TestGetUpstreamsBeforeFirstAnswer(t *testing.T) {
	cu := staticSource(unanswered())
	r := newRequest()
	pool.Attach(r, pool.NewSnapshot(nil)) // left by an earlier attempt
	if _, err := cu.GetUpstreams(r); err == nil {
		t.Error("want an error, so that Caddy falls back to static upstreams")
	}
	if pool.FromRequest(r) != nil {
		t.Error("a stale snapshot stays attached to the request")
	}
}

// BenchmarkGetUpstreams measures the consul source's per-request cost
// beside its peer, Caddy's own dynamic SRV source with its cache warm
// (served by an in-process DNS server), at the same numbers of instances.
// Compare them with benchstat -col /source.
func BenchmarkGetUpstreams(b *testing.B) {
	for _, n := range []int{3, 64, 256} {
		b.Run(fmt.Sprintf("instances=%d/source=consul", n), func(b *testing.B) {
			cu := staticSource(answered(instanceNames(n)))
			benchmarkSource(b, cu, newRequest())
		})
		b.Run(fmt.Sprintf("instances=%d/source=consul-with-candidates", n), func(b *testing.B) {
			cu := staticSource(answered(instanceNames(n)))
			cu.handout = handoutWith(naming{0, 1, 2, 3, 4, 5, 6, 7}) // the policy's own cost is in lbpolicy's benchmarks
			r := newRequest()
			b.ReportAllocs()
			for b.Loop() {
				pool.Attach(r, nil) // each iteration is a new request, not a retry
				cu.GetUpstreams(r)
			}
		})
		b.Run(fmt.Sprintf("instances=%d/source=consul-by-name", n), func(b *testing.B) {
			r := newRequest()
			caddyhttp.SetVar(r.Context(), serviceVar, "web")
			benchmarkSource(b, lazySource(instanceNames(n)), r)
		})
		b.Run(fmt.Sprintf("instances=%d/source=caddy-srv", n), func(b *testing.B) {
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			defer cancel()
			source := &reverseproxy.SRVUpstreams{
				Name:     fmt.Sprintf("_web._tcp.n%d.bench.", n),
				Refresh:  caddy.Duration(time.Hour),
				Resolver: &reverseproxy.UpstreamResolver{Addresses: []string{"tcp/" + startDNS(b, n)}},
			}
			if err := source.Provision(ctx); err != nil {
				b.Fatal(err)
			}
			r := newRequest()
			r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
			if upstreams, err := source.GetUpstreams(r); err != nil || len(upstreams) != n {
				b.Fatalf("SRV source gave %d upstreams (%v), want %d", len(upstreams), err, n)
			}
			benchmarkSource(b, source, r)
		})
	}
}

// instanceNames names n instances by their addresses.
func instanceNames(n int) []string {
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("10.0.%d.%d", i/256, i%256)
	}
	return names
}

func benchmarkSource(b *testing.B, source reverseproxy.UpstreamSource, r *http.Request) {
	b.ReportAllocs()
	for b.Loop() {
		source.GetUpstreams(r)
	}
}

// startDNS serves n SRV records for any name, over TCP on loopback.
func startDNS(b *testing.B, n int) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	server := &dns.Server{Listener: ln, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, query *dns.Msg) {
		answer := new(dns.Msg).SetReply(query)
		for i := range n {
			answer.Answer = append(answer.Answer, &dns.SRV{
				Hdr:    dns.RR_Header{Name: query.Question[0].Name, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: 3600},
				Weight: 1, Port: 80, Target: fmt.Sprintf("h%d.bench.", i),
			})
		}
		w.WriteMsg(answer)
	})}
	go server.ActivateAndServe()
	b.Cleanup(func() { server.Shutdown() })
	return ln.Addr().String()
}
