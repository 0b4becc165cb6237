package discovery_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/hashicorp/consul/api"

	"github.com/caddymesh/caddymesh/discovery"
	"github.com/caddymesh/caddymesh/internal/consul"
	"github.com/caddymesh/caddymesh/internal/consultest"
	"github.com/caddymesh/caddymesh/internal/meshtest"
	"github.com/caddymesh/caddymesh/internal/pool"
)

// These tests run Caddy in-process against this package's real Consul
// agent and real HTTP backends on loopback. Each uses services of its own.

const (
	propagation = meshtest.Propagation
	watchLoop   = consul.PollLoop
)

// serve loads a config whose mesh app points at agent, with one site on a
// free port; it returns the site's URL.
func serve(t *testing.T, site string) string { return meshtest.Serve(t, agent.Addr, site) }

// backends starts named backends and registers each as an instance of
// service, with the given check status (passing when absent).
func backends(t *testing.T, service string, statuses map[string]string, names ...string) map[string]*meshtest.Backend {
	return meshtest.Backends(t, agent, service, statuses, names...)
}

// reached and awaitReached are meshtest's.
var reached, awaitReached = meshtest.Reached, meshtest.AwaitReached

func TestTrafficFollowsConsulWithoutReload(t *testing.T) {
	backends(t, "follow", map[string]string{"c": api.HealthCritical}, "a", "b", "c")
	url := serve(t, `reverse_proxy {
		dynamic consul follow
		lb_policy round_robin
	}`)

	if got := reached(url, 40); got != "a,b" {
		t.Fatalf("traffic reached %s, want exactly the healthy a,b", got)
	}
	agent.SetStatus(t, "follow-c", api.HealthPassing)
	awaitReached(t, url, "a,b,c")

	agent.Deregister(t, "follow-a")
	awaitReached(t, url, "b,c")

	d := meshtest.StartBackend(t, "d")
	agent.Register(t, consultest.Instance{Service: "follow", ID: "follow-d", Port: d.Port()})
	awaitReached(t, url, "b,c,d")

	agent.SetStatus(t, "follow-b", api.HealthCritical)
	awaitReached(t, url, "c,d")

	agent.Maintenance(t, "follow-c", true)
	awaitReached(t, url, "d")
	if got := reached(url, 100); got != "d" {
		t.Errorf("after settling, traffic reached %s, want only d", got)
	}
}

func TestWarningMode(t *testing.T) {
	backends(t, "warn", map[string]string{"b": api.HealthWarning, "c": api.HealthCritical}, "a", "b", "c")
	passing := serve(t, `reverse_proxy {
		dynamic consul warn
	}`)
	if got := reached(passing, 40); got != "a" {
		t.Errorf("passing mode reached %s, want a", got)
	}
	warning := serve(t, `reverse_proxy {
		dynamic consul warn {
			health warning
		}
	}`)
	if got := reached(warning, 40); got != "a,b" {
		t.Errorf("warning mode reached %s, want a,b", got)
	}
}

// provision provisions a consul source on agent outside any config, as a
// policy would see it, and returns it with a request it has served.
func provision(t *testing.T, source *discovery.ConsulUpstreams) (*pool.Snapshot, []string) {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	source.Consul = &discovery.ConsulConfig{Address: agent.Addr}
	if err := source.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { source.Cleanup() })
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{}))
	upstreams, err := source.GetUpstreams(r)
	if err != nil {
		t.Fatal(err)
	}
	var dials []string
	for _, u := range upstreams {
		dials = append(dials, u.Dial)
	}
	return pool.FromRequest(r), dials
}

// The consul source finds the selection policy of its reverse_proxy, and
// hands Caddy a few candidates from a large pool when that policy can
// preselect them, every instance when it cannot.
func TestSourceAsksItsProxysPolicy(t *testing.T) {
	const instances = pool.PreselectAbove + 4
	for i := range instances {
		agent.Register(t, consultest.Instance{Service: "lineage", ID: fmt.Sprintf("lineage-%d", i), Port: 9000 + i})
	}
	policies := []string{"smooth_weighted", "consistent_hash", "round_robin"}
	want := []int{pool.MaxCandidates, pool.MaxCandidates, instances}
	var routes []string
	for _, policy := range policies {
		routes = append(routes, fmt.Sprintf(`{"handle": [{"handler": "reverse_proxy",
			"dynamic_upstreams": {"source": "consul", "service": "lineage", "consul": {"address": %q}},
			"load_balancing": {"selection_policy": {"policy": %q}}}]}`, agent.Addr, policy))
	}
	meshtest.Load(t, fmt.Sprintf(`{%s, "apps": {"http": {"servers": {"srv": {"listen": [":%d"], "routes": [%s]}}}}}`,
		meshtest.AdminJSON(), meshtest.FreePort(), strings.Join(routes, ",")), "json")
	app, err := caddy.ActiveContext().App("http")
	if err != nil {
		t.Fatal(err)
	}
	for i, route := range app.(*caddyhttp.App).Servers["srv"].Routes {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: "192.0.2.1"}))
		caddyhttp.NewTestReplacer(r)
		upstreams, err := route.Handlers[0].(*reverseproxy.Handler).DynamicUpstreams.GetUpstreams(r)
		if err != nil || len(upstreams) != want[i] {
			t.Errorf("with lb_policy %s: %d upstreams (%v), want %d", policies[i], len(upstreams), err, want[i])
		}
	}
}

func TestWeightsTravelWithTheRequest(t *testing.T) {
	w := func(passing, warning int) *api.AgentWeights {
		return &api.AgentWeights{Passing: passing, Warning: warning}
	}
	agent.Register(t, consultest.Instance{Service: "weighted", ID: "weighted-a", Port: 9001, Weights: w(5, 1)})
	agent.Register(t, consultest.Instance{Service: "weighted", ID: "weighted-b", Port: 9002, Weights: w(10, 2), Status: api.HealthWarning})
	agent.Register(t, consultest.Instance{Service: "weighted", ID: "weighted-c", Port: 9003, Weights: w(3, 0), Status: api.HealthWarning})
	agent.Register(t, consultest.Instance{Service: "weighted", ID: "weighted-d", Port: 9004, Tags: []string{"v2"}, Meta: map[string]string{"version": "2"}})

	snap, dials := provision(t, &discovery.ConsulUpstreams{Service: "weighted", Health: "warning"})
	if snap == nil || len(snap.Instances) != len(dials) {
		t.Fatalf("snapshot %+v does not describe upstreams %v", snap, dials)
	}
	weights := map[string]int{}
	for i, inst := range snap.Instances {
		if inst.Dial != dials[i] {
			t.Errorf("instance %d is %s, upstream %d is %s", i, inst.Dial, i, dials[i])
		}
		weights[inst.ID] = inst.Weight
		if inst.Node == "" || inst.Datacenter != agent.Datacenter {
			t.Errorf("instance %+v lacks its node or datacenter", inst)
		}
	}
	want := map[string]int{"weighted-a": 5, "weighted-b": 2, "weighted-d": 1} // c: warning weight 0, out
	if fmt.Sprint(weights) != fmt.Sprint(want) {
		t.Errorf("weights = %v, want %v", weights, want)
	}
	for _, inst := range snap.Instances {
		if inst.ID == "weighted-d" && (inst.Meta["version"] != "2" || len(inst.Tags) != 1) {
			t.Errorf("instance d lost its tags or meta: %+v", inst)
		}
	}
}

func TestTagsAndFilter(t *testing.T) {
	for name, tags := range map[string][]string{"v1": {"v1"}, "v2": {"v2"}, "canary": {"v2", "canary"}} {
		b := meshtest.StartBackend(t, name)
		agent.Register(t, consultest.Instance{Service: "tagged", ID: "tagged-" + name, Port: b.Port(), Tags: tags,
			Meta: map[string]string{"track": name}})
	}
	tests := []struct{ block, want string }{
		{"tag v2", "canary,v2"},
		{"tag v2 canary", "canary"},
		{"tag v2\n\t\t\ttag canary", "canary"},
		{`filter "Service.Meta.track == \"v1\""`, "v1"},
		{"tag v2\n\t\t\tfilter `Service.Meta.track != \"canary\"`", "v2"},
	}
	for _, tt := range tests {
		t.Run(strings.ReplaceAll(tt.block, "\n\t\t\t", "; "), func(t *testing.T) {
			url := serve(t, fmt.Sprintf(`reverse_proxy {
		dynamic consul tagged {
			%s
		}
	}`, tt.block))
			if got := reached(url, 40); got != tt.want {
				t.Errorf("reached %s, want %s", got, tt.want)
			}
		})
	}
}

func TestDatacenterFailover(t *testing.T) {
	dc2, err := consultest.Start(consultest.Options{Datacenter: "dc2"})
	if err != nil {
		t.Fatal(err)
	}
	defer dc2.Stop()
	if err := agent.JoinWAN(dc2); err != nil {
		t.Fatal(err)
	}
	meshtest.Eventually(t, 30*time.Second, "dc2 is reachable through dc1", func() bool {
		dcs, err := agent.Client.Catalog().Datacenters()
		return err == nil && len(dcs) == 2
	})
	local, remote := meshtest.StartBackend(t, "local"), meshtest.StartBackend(t, "remote")
	agent.Register(t, consultest.Instance{Service: "failover", ID: "failover-local", Port: local.Port(), Status: api.HealthCritical})
	dc2.Register(t, consultest.Instance{Service: "failover", ID: "failover-remote", Port: remote.Port()})

	url := serve(t, `reverse_proxy {
		dynamic consul failover {
			datacenter dc1 dc2
		}
	}`)
	if got := reached(url, 20); got != "remote" {
		t.Errorf("with dc1 unhealthy traffic reached %s, want dc2's remote", got)
	}
	agent.SetStatus(t, "failover-local", api.HealthPassing)
	awaitReached(t, url, "local")
	agent.SetStatus(t, "failover-local", api.HealthCritical)
	awaitReached(t, url, "remote")
}

func TestPanicThreshold(t *testing.T) {
	critical := map[string]string{"b": api.HealthCritical, "c": api.HealthCritical, "d": api.HealthCritical}
	backends(t, "panicky", critical, "a", "b", "c", "d")
	url := serve(t, `reverse_proxy {
		dynamic consul panicky {
			panic_threshold 50
		}
		lb_policy round_robin
	}`)
	if got := reached(url, 40); got != "a,b,c,d" {
		t.Errorf("1 of 4 healthy, below 50%%: reached %s, want all four", got)
	}
	agent.SetStatus(t, "panicky-b", api.HealthPassing)
	awaitReached(t, url, "a,b")
}

func TestUnknownServiceAnswers503(t *testing.T) {
	url := serve(t, `reverse_proxy {
		dynamic consul no-such-service
	}`)
	if status, _ := meshtest.Get(url); status != http.StatusServiceUnavailable {
		t.Errorf("status %d, want 503", status)
	}
}

func TestStaticUpstreamsServeUntilConsulFirstAnswers(t *testing.T) {
	consulPort := meshtest.FreePort()
	static, dynamic := meshtest.StartBackend(t, "static"), meshtest.StartBackend(t, "dynamic")
	url := serve(t, fmt.Sprintf(`reverse_proxy %s {
		dynamic consul late {
			consul {
				address 127.0.0.1:%d
			}
		}
	}`, static.Addr(), consulPort))
	if got := reached(url, 10); got != "static" {
		t.Fatalf("with Consul down from the start, traffic reached %s, want the static upstream", got)
	}

	late, err := consultest.Start(consultest.Options{HTTPPort: consulPort})
	if err != nil {
		t.Fatal(err)
	}
	defer late.Stop()
	late.Register(t, consultest.Instance{Service: "late", ID: "late-1", Port: dynamic.Port()})
	meshtest.EventuallyEquals(t, 10*time.Second, "Consul's instances take over", "dynamic", func() string {
		return reached(url, 10)
	})
}

func TestSourceConsulBlockOverridesApp(t *testing.T) {
	backends(t, "override", nil, "a")
	port := meshtest.FreePort()
	meshtest.Load(t, fmt.Sprintf(`{
	%s
	mesh {
		consul {
			address 127.0.0.1:1
		}
	}
}
:%d {
	reverse_proxy {
		dynamic consul override {
			consul {
				address %s
			}
		}
	}
}`, meshtest.Globals(), port, agent.Addr), "caddyfile")
	if got := reached(fmt.Sprintf("http://127.0.0.1:%d/", port), 10); got != "a" {
		t.Errorf("reached %s, want a through the source's own Consul address", got)
	}
}

func TestConsulKilledWhileServing(t *testing.T) {
	backends(t, "resilient", nil, "a", "b")
	url := serve(t, `reverse_proxy {
		dynamic consul resilient
		lb_policy round_robin
	}`)
	traffic := meshtest.StartTraffic(url, 4)
	agent.Kill()
	time.Sleep(2 * time.Second) // the watcher fails and backs off; traffic goes on
	if err := agent.Restart(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // the restarted dev agent is empty: a and b are gone
	c := meshtest.StartBackend(t, "c")
	agent.Register(t, consultest.Instance{Service: "resilient", ID: "resilient-c", Port: c.Port()})
	awaitReached(t, url, "c")
	traffic.Stop(t, "while Consul was down, restarted empty and re-populated")
}

func TestReloadsShareOneWatcherPerKeyAndLeakNothing(t *testing.T) {
	backends(t, "reload", nil, "a")
	backends(t, "reload-other", nil, "b")
	config := func(i int) string {
		return fmt.Sprintf(`{
	%s
	mesh {
		consul {
			address %s
		}
	}
}
:%d {
	handle /one {
		reverse_proxy {
			dynamic consul reload
			transport http {
				keepalive off
			}
		}
	}
	handle /two {
		reverse_proxy {
			dynamic consul reload
			header_down X-Reload %d
			transport http {
				keepalive off
			}
		}
	}
	handle {
		reverse_proxy {
			dynamic consul reload-other
			transport http {
				keepalive off
			}
		}
	}
}`, meshtest.Globals(), agent.Addr, port(t), i)
	}
	meshtest.Load(t, config(0), "caddyfile")
	url := fmt.Sprintf("http://127.0.0.1:%d/", port(t))

	// Under traffic: no failure, and exactly one watcher per watched service.
	traffic := meshtest.StartTraffic(url+"two", 2)
	for i := 1; i <= 20; i++ {
		meshtest.Load(t, config(i), "caddyfile")
		if n := meshtest.Goroutines(watchLoop); n != 2 {
			t.Fatalf("after reload %d: %d watchers, want 2 (one per watched service)", i, n)
		}
	}
	traffic.StopAcrossReloads(t, "during 20 reloads", 20)

	// Between requests: nothing is left behind. Upstream keep-alive is off
	// because stock Caddy's pooled upstream connections outlive a reload
	// until their idle timeout (2m), whatever the upstream source (static
	// `to` upstreams show the same); with it off, every goroutine left over
	// would be a leak.
	reached(url+"one", 5)
	meshtest.Client.CloseIdleConnections()
	baseline := settledGoroutines()
	for i := 21; i <= 40; i++ {
		meshtest.Load(t, config(i), "caddyfile")
		reached(url+"two", 2)
	}
	meshtest.Client.CloseIdleConnections()
	if after := settledGoroutines(); after > baseline {
		t.Errorf("%d goroutines after 20 reloads, %d before\n%s", after, baseline, meshtest.GoroutineSummary())
	}

	meshtest.Load(t, fmt.Sprintf("{\n\t%s\n}\n:%d {\n\trespond ok\n}", meshtest.Globals(), port(t)), "caddyfile")
	if n := meshtest.Goroutines(watchLoop); n != 0 {
		t.Errorf("%d watchers left once no route uses Consul, want 0", n)
	}
}

var sitePorts = map[string]int{}

// port returns a free port of the test's own, the same on every call.
func port(t *testing.T) int {
	if p, ok := sitePorts[t.Name()]; ok {
		return p
	}
	sitePorts[t.Name()] = meshtest.FreePort()
	return sitePorts[t.Name()]
}

// settledGoroutines is meshtest's.
var settledGoroutines = meshtest.SettledGoroutines

func TestBadConfigFailsAtProvision(t *testing.T) {
	tests := []struct{ name, source, want string }{
		{"unreadable token file", `"service": "x", "consul": {"token_file": "/nonexistent/token"}`, `token_file "/nonexistent/token"`},
		{"bad TLS file", `"service": "x", "consul": {"tls": {"ca_file": "/nonexistent/ca.pem"}}`, `ca_file "/nonexistent/ca.pem"`},
		{"filter that does not parse", `"service": "x", "filter": "Service.Nope =="`, `filter "Service.Nope =="`},
		{"wait above 10m", `"service": "x", "wait": "11m"`, "wait 11m0s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := meshtest.LoadError(t, fmt.Sprintf(`{
				%s,
				"apps": {"http": {"servers": {"s": {"listen": [":%d"], "routes": [{"handle": [{
					"handler": "reverse_proxy",
					"dynamic_upstreams": {"source": "consul", %s}
				}]}]}}}}
			}`, meshtest.AdminJSON(), meshtest.FreePort(), tt.source), "json")
			if !strings.Contains(got, tt.want) {
				t.Errorf("error %q does not contain %q", got, tt.want)
			}
		})
	}
}
