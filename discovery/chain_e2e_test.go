package discovery_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/caddymesh/caddymesh/internal/consultest"
	"github.com/caddymesh/caddymesh/internal/meshtest"
)

// These tests are the proofs: Caddy in-process follows discovery
// chains that the package's real Consul agent compiles from config entries
// written as `consul config write` does, to real backends on loopback.

// chainEcho is a backend that answers its name, the path it was asked for and
// the X-Route header it got: "name path x-route".
type chainEcho struct {
	name string
	hits atomic.Int64
	srv  *httptest.Server
}

func startChainEcho(t testing.TB, name string) *chainEcho {
	e := &chainEcho{name: name}
	e.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.hits.Add(1)
		fmt.Fprintf(w, "%s %s %s", name, r.URL.RequestURI(), r.Header.Get("X-Route"))
	}))
	t.Cleanup(e.srv.Close)
	return e
}

func (e *chainEcho) port() int { return e.srv.Listener.Addr().(*net.TCPAddr).Port }

// registerVersion starts an echo backend and registers it as an instance of
// service with meta version, in agent a.
func registerVersion(t testing.TB, a *consultest.Agent, service, version string) *chainEcho {
	e := startChainEcho(t, service+"-v"+version)
	id := fmt.Sprintf("%s-v%s-%d", service, version, e.port())
	a.Register(t, consultest.Instance{Service: service, ID: id, Port: e.port(), Meta: map[string]string{"version": version}})
	t.Cleanup(func() { a.Deregister(t, id) })
	return e
}

// serveChain serves a site whose reverse_proxy follows service's chain,
// with the README's retries and the extra options; it returns the site's
// URL.
func serveChain(t *testing.T, service string, extra ...string) string {
	return serve(t, chainProxy(service, extra...))
}

// chainProxy is the reverse_proxy of serveChain.
func chainProxy(service string, extra ...string) string {
	return fmt.Sprintf(`reverse_proxy {
		dynamic consul %s {
			chain
		}
		lb_retries 3
		lb_try_duration 5s
		lb_try_interval 50ms
		fail_duration 2s
		%s
	}`, service, strings.Join(extra, "\n"))
}

func splitter(service string, v1, v2 float32) *api.ServiceSplitterConfigEntry {
	return &api.ServiceSplitterConfigEntry{Kind: api.ServiceSplitter, Name: service, Splits: []api.ServiceSplit{
		{Weight: v1, ServiceSubset: "v1"}, {Weight: v2, ServiceSubset: "v2"},
	}}
}

// set writes a config entry, as `consul config write` does.
func set(t testing.TB, e api.ConfigEntry) {
	t.Helper()
	if _, _, err := agent.Client.ConfigEntries().Set(e, nil); err != nil {
		t.Fatalf("writing %s %s: %v", e.GetKind(), e.GetName(), err)
	}
}

// share sends n requests to url from a few workers and returns how many
// each body's first word (the backend's name) answered, failures as
// "status N".
func share(url string, n int) map[string]int {
	const workers = 8
	var mu sync.Mutex
	counts := map[string]int{}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += workers {
				status, body := meshtest.Get(url)
				name, _, _ := strings.Cut(body, " ")
				if status != http.StatusOK {
					name = fmt.Sprintf("status %d", status)
				}
				mu.Lock()
				counts[name]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return counts
}

// awaitOnly waits until every one of 50 requests to url reaches backend.
func awaitOnly(t *testing.T, url, backend string) {
	t.Helper()
	meshtest.Eventually(t, propagation, "every request reaches "+backend, func() bool {
		return share(url, 50)[backend] == 50
	})
}

func TestChainSplitShiftsTrafficUnderLoad(t *testing.T) {
	writeEntries(t, append(httpDefaults("cs-web"), versionSubsets("cs-web"), splitter("cs-web", 90, 10))...)
	registerVersion(t, agent, "cs-web", "1")
	registerVersion(t, agent, "cs-web", "2")
	url := serveChain(t, "cs-web")

	const n = 10000
	counts := share(url, n)
	v2 := float64(counts["cs-web-v2"]) * 100 / n
	if counts["cs-web-v1"]+counts["cs-web-v2"] != n || v2 < 8.5 || v2 > 11.5 {
		t.Fatalf("over %d requests: %v (v2 %.2f%%), want every one answered and v2 at 10%% ± 1.5", n, counts, v2)
	}
	t.Logf("90/10 over %d requests: v2 took %.2f%%", n, v2)

	traffic := meshtest.StartTraffic(url, 4)
	set(t, splitter("cs-web", 50, 50))
	meshtest.Eventually(t, propagation, "the split is 50/50", func() bool {
		c := share(url, 400)
		return c["cs-web-v1"] > 140 && c["cs-web-v2"] > 140
	})
	set(t, splitter("cs-web", 0, 100))
	awaitOnly(t, url, "cs-web-v2")
	traffic.Stop(t, "while the split changed 90/10, 50/50, 0/100")
}

func TestChainRouterRulesAndPrefixRewrite(t *testing.T) {
	writeEntries(t, append(httpDefaults("cr-web", "cr-admin", "cr-writes"),
		&api.ServiceResolverConfigEntry{Kind: api.ServiceResolver, Name: "cr-web", DefaultSubset: "v1", Subsets: versionSubsets("cr-web").Subsets},
		&api.ServiceRouterConfigEntry{Kind: api.ServiceRouter, Name: "cr-web", Routes: []api.ServiceRoute{
			{Match: &api.ServiceRouteMatch{HTTP: &api.ServiceRouteHTTPMatch{PathPrefix: "/admin"}},
				Destination: &api.ServiceRouteDestination{Service: "cr-admin", PrefixRewrite: "/",
					RequestHeaders:  &api.HTTPHeaderModifiers{Set: map[string]string{"x-route": "admin"}},
					ResponseHeaders: &api.HTTPHeaderModifiers{Set: map[string]string{"x-served-by": "admin"}}}},
			{Match: &api.ServiceRouteMatch{HTTP: &api.ServiceRouteHTTPMatch{Header: []api.ServiceRouteHTTPMatchHeader{{Name: "x-canary", Exact: "1"}}}},
				Destination: &api.ServiceRouteDestination{ServiceSubset: "v2"}},
			{Match: &api.ServiceRouteMatch{HTTP: &api.ServiceRouteHTTPMatch{Header: []api.ServiceRouteHTTPMatchHeader{{Name: "x-user", Regex: "beta-.*"}}}},
				Destination: &api.ServiceRouteDestination{ServiceSubset: "v2"}},
			{Match: &api.ServiceRouteMatch{HTTP: &api.ServiceRouteHTTPMatch{QueryParam: []api.ServiceRouteHTTPMatchQueryParam{{Name: "canary", Exact: "yes"}}}},
				Destination: &api.ServiceRouteDestination{ServiceSubset: "v2"}},
			{Match: &api.ServiceRouteMatch{HTTP: &api.ServiceRouteHTTPMatch{Methods: []string{"POST"}}},
				Destination: &api.ServiceRouteDestination{Service: "cr-writes"}},
		}})...)
	registerVersion(t, agent, "cr-web", "1")
	registerVersion(t, agent, "cr-web", "2")
	registerVersion(t, agent, "cr-admin", "1")
	registerVersion(t, agent, "cr-writes", "1")
	url := serve(t, "mesh_chain\n"+chainProxy("cr-web"))

	tests := []struct {
		name, method, path string
		header             http.Header
		want               string
	}{
		{"a path prefix to another service, rewritten", "GET", "admin/users?x=1", nil, "cr-admin-v1 /users?x=1 admin"},
		{"a header exact to a subset", "GET", "page", http.Header{"X-Canary": {"1"}}, "cr-web-v2 /page "},
		{"a header regex to a subset", "GET", "page", http.Header{"X-User": {"beta-ann"}}, "cr-web-v2 /page "},
		{"a query parameter to a subset", "GET", "page?canary=yes", nil, "cr-web-v2 /page?canary=yes "},
		{"a method to another service", "POST", "page", nil, "cr-writes-v1 /page "},
		{"the rest to the default subset", "GET", "page", http.Header{"X-Canary": {"0"}}, "cr-web-v1 /page "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, url+tt.path, nil)
			if tt.header != nil {
				req.Header = tt.header
			}
			for range 5 {
				resp, err := meshtest.Client.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK || string(body) != tt.want {
					t.Fatalf("%s /%s %v: %d %q, want 200 %q", tt.method, tt.path, tt.header, resp.StatusCode, body, tt.want)
				}
				if admin := strings.HasPrefix(tt.want, "cr-admin"); (resp.Header.Get("X-Served-By") == "admin") != admin {
					t.Fatalf("%s /%s: X-Served-By %q; want the admin route's response header on its responses only", tt.method, tt.path, resp.Header.Get("X-Served-By"))
				}
			}
		})
	}
	if view := chainView(t, "cr-web"); len(view.NotHonoured) != 0 {
		t.Errorf("not honoured %q, want nothing: mesh_chain did the response headers", view.NotHonoured)
	}
}

func TestChainRedirectDefaultSubsetAndDeletion(t *testing.T) {
	registerVersion(t, agent, "cd-web", "1")
	registerVersion(t, agent, "cd-web", "2")
	registerVersion(t, agent, "cd-new", "1")
	url := serveChain(t, "cd-web")
	if got := share(url, 40); got["cd-web-v1"] == 0 || got["cd-web-v2"] == 0 {
		t.Fatalf("the default chain reached %v, want both instances", got)
	}

	resolver := &api.ServiceResolverConfigEntry{Kind: api.ServiceResolver, Name: "cd-web", DefaultSubset: "v2", Subsets: versionSubsets("cd-web").Subsets}
	set(t, resolver)
	awaitOnly(t, url, "cd-web-v2")

	set(t, &api.ServiceResolverConfigEntry{Kind: api.ServiceResolver, Name: "cd-web", Redirect: &api.ServiceResolverRedirect{Service: "cd-new"}})
	awaitOnly(t, url, "cd-new-v1")

	if _, err := agent.Client.ConfigEntries().Delete(api.ServiceResolver, "cd-web", nil); err != nil {
		t.Fatal(err)
	}
	meshtest.Eventually(t, propagation, "the default chain again", func() bool {
		got := share(url, 40)
		return got["cd-web-v1"] > 0 && got["cd-web-v2"] > 0 && got["cd-web-v1"]+got["cd-web-v2"] == 40
	})
	view := chainView(t, "cd-web")
	if !view.Default || len(view.Targets) != 1 {
		t.Errorf("/mesh/chains/cd-web after the deletion: %+v, want the default chain with one target", view)
	}
}

// chainViewJSON is what GET /mesh/chains/<service> answers, in part.
type chainViewJSON struct {
	Default bool `json:"default"`
	Chain   []struct {
		Splits []struct {
			Weight  float64  `json:"weight"`
			Targets []string `json:"targets"`
		} `json:"splits"`
	} `json:"chain"`
	Targets []struct {
		ID      string `json:"id"`
		Healthy int    `json:"healthy"`
		Total   int    `json:"total"`
	} `json:"targets"`
	NotHonoured []string `json:"not_honoured"`
}

// chainView returns the one view of service's chain in the admin API.
func chainView(t *testing.T, service string) chainViewJSON {
	t.Helper()
	resp, err := http.Get(meshtest.AdminURL() + "/mesh/chains/" + service)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var views []chainViewJSON
	if err := json.Unmarshal(body, &views); err != nil || len(views) != 1 {
		t.Fatalf("GET /mesh/chains/%s: %d %s (%v), want one view", service, resp.StatusCode, body, err)
	}
	return views[0]
}

func TestChainAdminShowsWeightsTargetsAndNotHonoured(t *testing.T) {
	writeEntries(t, append(httpDefaults("ca-web"), versionSubsets("ca-web"), splitter("ca-web", 75, 25),
		&api.ServiceRouterConfigEntry{Kind: api.ServiceRouter, Name: "ca-web", Routes: []api.ServiceRoute{
			{Match: &api.ServiceRouteMatch{HTTP: &api.ServiceRouteHTTPMatch{PathPrefix: "/slow"}},
				Destination: &api.ServiceRouteDestination{NumRetries: 5,
					ResponseHeaders: &api.HTTPHeaderModifiers{Set: map[string]string{"x-slow": "1"}}}},
		}})...)
	registerVersion(t, agent, "ca-web", "1")
	registerVersion(t, agent, "ca-web", "1")
	registerVersion(t, agent, "ca-web", "2")
	url := serveChain(t, "ca-web") // without mesh_chain
	view := chainView(t, "ca-web")
	if len(view.Chain) != 2 || len(view.Chain[1].Splits) != 2 || view.Chain[1].Splits[0].Weight != 75 || view.Chain[1].Splits[1].Weight != 25 {
		t.Errorf("routes %+v, want /slow then the 75/25 split", view.Chain)
	}
	healthy := map[string]int{}
	for _, target := range view.Targets {
		healthy[target.ID] = target.Healthy
	}
	if healthy[target("ca-web", "v1")] != 2 || healthy[target("ca-web", "v2")] != 1 {
		t.Errorf("targets %+v, want v1 with 2 healthy instances and v2 with 1", view.Targets)
	}
	if len(view.NotHonoured) != 1 || !strings.Contains(view.NotHonoured[0], "NumRetries") {
		t.Errorf("not honoured %q, want the route's NumRetries", view.NotHonoured)
	}
	if status, _ := meshtest.Get(url + "slow"); status != http.StatusOK {
		t.Fatalf("GET /slow: %d", status)
	}
	if view = chainView(t, "ca-web"); len(view.NotHonoured) != 2 || !strings.Contains(view.NotHonoured[1], "without the mesh_chain handler") {
		t.Errorf("not honoured %q after a request to /slow without mesh_chain, want its ResponseHeaders too", view.NotHonoured)
	}
}

func TestChainSplitterFloodKeepsWatchesBounded(t *testing.T) {
	writeEntries(t, append(httpDefaults("cf-web"), versionSubsets("cf-web"), splitter("cf-web", 50, 50))...)
	registerVersion(t, agent, "cf-web", "1")
	registerVersion(t, agent, "cf-web", "2")
	// Upstream keep-alive is off, so that pooled connections do not count
	// as goroutines left over (see TestReloadsShareOneWatcherPerKeyAndLeakNothing).
	url := serveChain(t, "cf-web", "transport http {\n keepalive off\n}")
	share(url, 20)
	meshtest.Client.CloseIdleConnections()
	baseline := settledGoroutines()
	watches := meshtest.Goroutines(watchLoop)

	traffic := meshtest.StartTraffic(url, 8)
	for i := range 100 { // every 100ms for 10s
		set(t, splitter("cf-web", float32(i%11)*10, 100-float32(i%11)*10))
		if n := meshtest.Goroutines(watchLoop); n > watches {
			t.Fatalf("after %d splitter changes: %d watches, want at most %d (the chain and its two targets)", i+1, n, watches)
		}
		time.Sleep(100 * time.Millisecond)
	}
	traffic.Stop(t, "while the splitter changed every 100ms for 10s")
	meshtest.Client.CloseIdleConnections()
	if after := settledGoroutines(); after > baseline+2 {
		t.Errorf("%d goroutines after the flood, %d before\n%s", after, baseline, meshtest.GoroutineSummary())
	}
}

func TestChainFailsOverToAnotherDatacenter(t *testing.T) {
	other := joinAnotherDatacenter(t)
	writeEntries(t, &api.ServiceResolverConfigEntry{Kind: api.ServiceResolver, Name: "cx-web",
		Failover: map[string]api.ServiceResolverFailover{"*": {Datacenters: []string{other.Datacenter}}}})
	local := startChainEcho(t, "cx-web-dc1")
	agent.Register(t, consultest.Instance{Service: "cx-web", ID: "cx-web-dc1", Port: local.port()})
	t.Cleanup(func() { agent.Deregister(t, "cx-web-dc1") })
	remote := startChainEcho(t, "cx-web-remote")
	other.Register(t, consultest.Instance{Service: "cx-web", ID: "cx-web-remote", Port: remote.port()})
	url := serveChain(t, "cx-web")
	awaitOnly(t, url, "cx-web-dc1")

	traffic := meshtest.StartTraffic(url, 4)
	agent.SetStatus(t, "cx-web-dc1", api.HealthCritical)
	awaitOnly(t, url, "cx-web-remote")
	agent.SetStatus(t, "cx-web-dc1", api.HealthPassing)
	awaitOnly(t, url, "cx-web-dc1")
	traffic.Stop(t, "while the local target failed over to the other datacenter and back")

	// The local instance dies, and its check fails a moment later: the
	// README's retries carry the requests in between.
	traffic = meshtest.StartTraffic(url, 4)
	local.srv.Close()
	time.Sleep(20 * time.Millisecond)
	agent.SetStatus(t, "cx-web-dc1", api.HealthCritical)
	awaitOnly(t, url, "cx-web-remote")
	traffic.Stop(t, "while the local instance died and the other datacenter took over")
	if view := chainView(t, "cx-web"); len(view.Targets) != 2 {
		t.Errorf("targets %+v, want the local one and the other datacenter's", view.Targets)
	}
}

// BenchmarkChainPropagation measures, as BenchmarkPropagation does, the
// time from a splitter's change in Consul (all to v2, then all to v1)
// until the next request through Caddy reaches the new subset. Run it with
// -benchtime=50x or more for 100+ trials.
func BenchmarkChainPropagation(b *testing.B) {
	writeEntries(b, append(httpDefaults("cp-web"), versionSubsets("cp-web"), splitter("cp-web", 100, 0))...)
	registerVersion(b, agent, "cp-web", "1")
	registerVersion(b, agent, "cp-web", "2")
	port := meshtest.FreePort()
	meshtest.Load(b, fmt.Sprintf("{\n\t%s\n\tmesh {\n\t\tconsul {\n\t\t\taddress %s\n\t\t}\n\t}\n}\n:%d {\n%s\n}",
		meshtest.Globals(), agent.Addr, port, chainProxy("cp-web")), "caddyfile")
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	changes := []struct {
		name    string
		entry   api.ConfigEntry
		backend string
	}{
		{"to-v2", splitter("cp-web", 0, 100), "cp-web-v2"},
		{"to-v1", splitter("cp-web", 100, 0), "cp-web-v1"},
	}
	measure(b, len(changes), func(i int) time.Duration {
		start := time.Now()
		set(b, changes[i].entry)
		for {
			if _, body := meshtest.Get(url); strings.HasPrefix(body, changes[i].backend+" ") {
				return time.Since(start)
			}
			if time.Since(start) > 10*time.Second {
				b.Fatalf("no request reached %s within 10s of the change", changes[i].backend)
			}
		}
	}, func(i int) string { return changes[i].name })
}

// datacentersStarted numbers the datacenters joinAnotherDatacenter starts.
var datacentersStarted atomic.Int32

// joinAnotherDatacenter starts a dev agent of a datacenter of its own
// (TestDatacenterFailover has a dc2; a name is never reused, since Consul
// keeps a forgotten server's name from joining again for a while) and
// WAN-joins it to the package's agent; at the end of the test it stops it
// and has dc1 forget it, so that another test counting datacenters does not
// find a dead one.
func joinAnotherDatacenter(t *testing.T) *consultest.Agent {
	name := fmt.Sprintf("chain-dc%d", datacentersStarted.Add(1))
	other, err := consultest.Start(consultest.Options{Datacenter: name})
	if err != nil {
		t.Fatal(err)
	}
	datacenters := func() int {
		dcs, _ := agent.Client.Catalog().Datacenters()
		return len(dcs)
	}
	t.Cleanup(func() {
		other.Stop()
		member := "node-" + name + "." + name
		if err := agent.Client.Agent().ForceLeaveOpts(member, api.ForceLeaveOpts{Prune: true, WAN: true}); err != nil {
			t.Errorf("forgetting %s: %v", name, err)
		}
		meshtest.Eventually(t, 30*time.Second, "dc1 forgets "+name, func() bool { return datacenters() == 1 })
	})
	if err := agent.JoinWAN(other); err != nil {
		t.Fatal(err)
	}
	meshtest.Eventually(t, 30*time.Second, "dc1 knows "+name, func() bool { return datacenters() == 2 })
	return other
}
