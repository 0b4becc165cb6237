package discovery_test

import (
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/caddymesh/caddymesh/discovery"
)

// The chains in these tests are compiled by the package's real Consul
// agent from config entries written as `consul config write` does.

// writeEntries writes config entries in order, and deletes them in the
// reverse order when the test ends.
func writeEntries(t testing.TB, entries ...api.ConfigEntry) {
	t.Helper()
	for _, e := range entries {
		if _, _, err := agent.Client.ConfigEntries().Set(e, nil); err != nil {
			t.Fatalf("writing %s %s: %v", e.GetKind(), e.GetName(), err)
		}
	}
	t.Cleanup(func() {
		for _, e := range slices.Backward(entries) {
			if _, err := agent.Client.ConfigEntries().Delete(e.GetKind(), e.GetName(), nil); err != nil {
				t.Errorf("deleting %s %s: %v", e.GetKind(), e.GetName(), err)
			}
		}
	})
}

// httpDefaults says that services speak HTTP, which routers and splitters
// need.
func httpDefaults(services ...string) []api.ConfigEntry {
	var entries []api.ConfigEntry
	for _, s := range services {
		entries = append(entries, &api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: s, Protocol: "http"})
	}
	return entries
}

// versionSubsets is a resolver of service with subsets v1 and v2 by
// Service.Meta.version.
func versionSubsets(service string) *api.ServiceResolverConfigEntry {
	return &api.ServiceResolverConfigEntry{Kind: api.ServiceResolver, Name: service, Subsets: map[string]api.ServiceResolverSubset{
		"v1": {Filter: `Service.Meta.version == "1"`},
		"v2": {Filter: `Service.Meta.version == "2"`},
	}}
}

func probe(t testing.TB, service string) *discovery.ChainProbe {
	t.Helper()
	p, err := discovery.NewChainProbe(agent.Client, service)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// target is the ID Consul gives the target of service (and subset) in dc1.
func target(service, subset string) string {
	id := service + ".default.default.dc1"
	if subset != "" {
		id = subset + "." + id
	}
	return id
}

func TestChainWithoutConfigEntriesHasOneDirectTarget(t *testing.T) {
	p := probe(t, "ch-plain")
	if !p.Direct() {
		t.Error("the default chain is evaluated per request; want its one target served directly")
	}
	if got := p.Targets(); !slices.Equal(got, []string{target("ch-plain", "")}) {
		t.Errorf("targets = %v, want the service's own", got)
	}
	if got := p.NotHonoured(); len(got) != 0 {
		t.Errorf("not honoured = %v, want nothing", got)
	}
}

func TestChainSplitsByWeight(t *testing.T) {
	writeEntries(t, append(httpDefaults("ch-split"), versionSubsets("ch-split"),
		&api.ServiceSplitterConfigEntry{Kind: api.ServiceSplitter, Name: "ch-split", Splits: []api.ServiceSplit{
			{Weight: 90, ServiceSubset: "v1"}, {Weight: 10, ServiceSubset: "v2"},
		}})...)
	p := probe(t, "ch-split")
	if p.Direct() {
		t.Fatal("a split chain is served directly")
	}
	shares := map[string]int{}
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	for roll := range uint32(10000) { // every roll once: the shares are exact
		shares[p.Choose(r, roll)]++
	}
	if shares[target("ch-split", "v1")] != 9000 || shares[target("ch-split", "v2")] != 1000 {
		t.Errorf("shares of 10000 rolls = %v, want 9000 for v1 and 1000 for v2", shares)
	}
	r = httptest.NewRequest(http.MethodGet, "/any/path?x=1", nil)
	if allocs := testing.AllocsPerRun(100, func() { p.Choose(r, 9500) }); allocs != 0 {
		t.Errorf("evaluating a split allocates %v times, want 0", allocs)
	}
}

func TestChainRoutesInOrder(t *testing.T) {
	match := func(m api.ServiceRouteHTTPMatch) *api.ServiceRouteMatch { return &api.ServiceRouteMatch{HTTP: &m} }
	to := func(service, subset string) *api.ServiceRouteDestination {
		return &api.ServiceRouteDestination{Service: service, ServiceSubset: subset}
	}
	writeEntries(t, append(httpDefaults("ch-web", "ch-admin", "ch-writes"), versionSubsets("ch-web"),
		&api.ServiceRouterConfigEntry{Kind: api.ServiceRouter, Name: "ch-web", Routes: []api.ServiceRoute{
			{Match: match(api.ServiceRouteHTTPMatch{PathPrefix: "/admin"}), Destination: to("ch-admin", "")},
			{Match: match(api.ServiceRouteHTTPMatch{PathExact: "/v2", CaseInsensitive: true}), Destination: to("", "v2")},
			{Match: match(api.ServiceRouteHTTPMatch{PathRegex: "/items/[0-9]+"}), Destination: to("", "v2")},
			{Match: match(api.ServiceRouteHTTPMatch{Header: []api.ServiceRouteHTTPMatchHeader{{Name: "x-canary", Exact: "1"}}}), Destination: to("", "v2")},
			{Match: match(api.ServiceRouteHTTPMatch{Header: []api.ServiceRouteHTTPMatchHeader{{Name: "x-user", Regex: "[a-c].*"}}}), Destination: to("", "v2")},
			{Match: match(api.ServiceRouteHTTPMatch{Header: []api.ServiceRouteHTTPMatchHeader{
				{Name: "x-tier", Prefix: "gold"}, {Name: "x-region", Suffix: "-eu"}, {Name: "x-debug", Present: true, Invert: true},
			}}), Destination: to("", "v2")},
			{Match: match(api.ServiceRouteHTTPMatch{QueryParam: []api.ServiceRouteHTTPMatchQueryParam{{Name: "beta", Present: true}}}), Destination: to("", "v2")},
			{Match: match(api.ServiceRouteHTTPMatch{QueryParam: []api.ServiceRouteHTTPMatchQueryParam{{Name: "ver", Regex: "2\\.[0-9]"}}}), Destination: to("", "v2")},
			{Match: match(api.ServiceRouteHTTPMatch{Methods: []string{"POST", "DELETE"}}), Destination: to("ch-writes", "")},
		}})...)
	p := probe(t, "ch-web")
	web, v2 := target("ch-web", ""), target("ch-web", "v2")
	tests := []struct {
		name, method, target string
		header               http.Header
		want                 string
	}{
		{"a path prefix goes to its service", "GET", "/admin/users", nil, target("ch-admin", "")},
		{"a prefix matches at the start only", "GET", "/x/admin", nil, web},
		{"the path is normalized before matching", "GET", "/x/../admin", nil, target("ch-admin", "")},
		{"an exact path matches whatever its case, as asked", "GET", "/V2", nil, v2},
		{"an exact path matches the whole path", "GET", "/v2/more", nil, web},
		{"a path regex matches the whole path", "GET", "/items/42", nil, v2},
		{"a path regex does not match a part", "GET", "/items/42/x", nil, web},
		{"a header exact", "GET", "/", http.Header{"X-Canary": {"1"}}, v2},
		{"a header exact is exact", "GET", "/", http.Header{"X-Canary": {"10"}}, web},
		{"a header regex matches the whole value", "GET", "/", http.Header{"X-User": {"bob"}}, v2},
		{"a header regex that does not match", "GET", "/", http.Header{"X-User": {"dave"}}, web},
		{"prefix, suffix and an inverted presence all hold", "GET", "/", http.Header{"X-Tier": {"gold-plus"}, "X-Region": {"west-eu"}}, v2},
		{"an inverted presence fails on a present header", "GET", "/", http.Header{"X-Tier": {"gold"}, "X-Region": {"w-eu"}, "X-Debug": {"1"}}, web},
		{"a suffix that does not match", "GET", "/", http.Header{"X-Tier": {"gold"}, "X-Region": {"eu-west"}}, web},
		{"a query parameter present", "GET", "/?a=1&beta", nil, v2},
		{"a query parameter regex on its unescaped value", "GET", "/?ver=2%2E5", nil, v2},
		{"a query parameter regex that does not match", "GET", "/?ver=3.0", nil, web},
		{"a method", "DELETE", "/", nil, target("ch-writes", "")},
		{"another method falls through to the default route", "PUT", "/", nil, web},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(tt.method, tt.target, nil)
			for name, values := range tt.header {
				r.Header[name] = values
			}
			if got := p.Choose(r, 0); got != tt.want {
				t.Errorf("%s %s %v went to %q, want %q", tt.method, tt.target, tt.header, got, tt.want)
			}
		})
	}
	r := httptest.NewRequest(http.MethodPut, "/some/long/path?q=1&ver=1.0", nil)
	r.Header.Set("X-User", "zed")
	if allocs := testing.AllocsPerRun(100, func() { p.Choose(r, 0) }); allocs != 0 {
		t.Errorf("evaluating nine routes allocates %v times, want 0", allocs)
	}
}

func TestChainActionsOnTheRequest(t *testing.T) {
	writeEntries(t, append(httpDefaults("ch-act", "ch-act-admin"), versionSubsets("ch-act"),
		&api.ServiceSplitterConfigEntry{Kind: api.ServiceSplitter, Name: "ch-act-admin", Splits: []api.ServiceSplit{
			{Weight: 100, Service: "ch-act-admin", RequestHeaders: &api.HTTPHeaderModifiers{
				Set: map[string]string{"x-split": "yes", "x-who": "split"}}},
		}},
		&api.ServiceRouterConfigEntry{Kind: api.ServiceRouter, Name: "ch-act", Routes: []api.ServiceRoute{
			{Match: &api.ServiceRouteMatch{HTTP: &api.ServiceRouteHTTPMatch{PathPrefix: "/admin"}},
				Destination: &api.ServiceRouteDestination{Service: "ch-act-admin", PrefixRewrite: "/",
					RequestHeaders: &api.HTTPHeaderModifiers{
						Add: map[string]string{"x-added": "route"}, Set: map[string]string{"x-who": "route"},
						Remove: []string{"x-secret"}}}},
			{Match: &api.ServiceRouteMatch{HTTP: &api.ServiceRouteHTTPMatch{PathPrefix: "/api/"}},
				Destination: &api.ServiceRouteDestination{ServiceSubset: "v2", PrefixRewrite: "/v2/"}},
		}})...)
	p := probe(t, "ch-act")
	tests := []struct{ path, wantPath string }{
		{"/admin/users?x=1", "/users"},
		{"/admin", "/"},
		{"/admin/", "/"},
		{"/api/items", "/v2/items"},
		{"/other", "/other"},
		// the route is chosen on the normalized path, which is the one sent
		{"/x/%2e%2e/api/items", "/v2/items"},
		{"/api/../other", "/other"},
		{"/api/%2E%2E//other", "/other"},
	}
	for _, tt := range tests {
		r := httptest.NewRequest(http.MethodGet, tt.path, nil)
		p.Evaluate(r, 0)
		if r.URL.Path != tt.wantPath {
			t.Errorf("%s rewritten to %q, want %q", tt.path, r.URL.Path, tt.wantPath)
		}
	}
	r := httptest.NewRequest(http.MethodGet, "/admin/x?keep=1", nil)
	r.Header.Set("X-Secret", "s")
	r.Header.Set("X-Added", "client")
	if got := p.Evaluate(r, 0); got != target("ch-act-admin", "") {
		t.Fatalf("went to %q", got)
	}
	if r.Header.Get("X-Secret") != "" || r.Header.Get("X-Split") != "yes" || r.Header.Get("X-Who") != "route" ||
		strings.Join(r.Header.Values("X-Added"), ",") != "client,route" || r.URL.RawQuery != "keep=1" {
		t.Errorf("headers after the actions = %v, query %q; want x-secret removed, x-split set by the split, "+
			"x-who set by the route over the split, x-added added, the query kept", r.Header, r.URL.RawQuery)
	}
}

// Actions on hop-by-hop or framing headers are not done: reverse_proxy has
// removed the client's, and a chain setting Connection and Upgrade would
// turn a request into a protocol switch no client asked for.
func TestChainDoesNotModifyFramingHeaders(t *testing.T) {
	writeEntries(t, append(httpDefaults("ch-hop"),
		&api.ServiceRouterConfigEntry{Kind: api.ServiceRouter, Name: "ch-hop", Routes: []api.ServiceRoute{
			{Match: &api.ServiceRouteMatch{HTTP: &api.ServiceRouteHTTPMatch{PathPrefix: "/"}},
				Destination: &api.ServiceRouteDestination{RequestHeaders: &api.HTTPHeaderModifiers{
					Set:    map[string]string{"connection": "Upgrade", "Upgrade": "h2c", "Content-Length": "5", "x-ok": "1"},
					Add:    map[string]string{"Transfer-Encoding": "chunked", ":authority": "evil"},
					Remove: []string{"TE"}}}},
		}})...)
	p := probe(t, "ch-hop")
	r := httptest.NewRequest(http.MethodGet, "/x", nil)
	r.Header.Set("Te", "trailers")
	if got := p.Evaluate(r, 0); got != target("ch-hop", "") {
		t.Fatalf("went to %q", got)
	}
	for _, name := range []string{"Connection", "Upgrade", "Content-Length", "Transfer-Encoding", ":authority"} {
		if _, set := r.Header[name]; set {
			t.Errorf("%s set by the chain: %v", name, r.Header)
		}
	}
	if r.Header.Get("X-Ok") != "1" || r.Header.Get("Te") != "trailers" {
		t.Errorf("headers %v: want X-Ok set, Te kept", r.Header)
	}
	got := strings.Join(p.NotHonoured(), "\n")
	for _, want := range []string{`"connection"`, `"Upgrade"`, `"Content-Length"`, `"Transfer-Encoding"`, `":authority"`, `"TE"`} {
		if !strings.Contains(got, want) {
			t.Errorf("not honoured:\n%s\nwant a line with %s", got, want)
		}
	}
	if strings.Contains(got, "x-ok") {
		t.Errorf("not honoured:\n%s\nx-ok is set", got)
	}
}

func TestChainFailsOverInOrder(t *testing.T) {
	writeEntries(t, &api.ServiceResolverConfigEntry{Kind: api.ServiceResolver, Name: "ch-fo", Failover: map[string]api.ServiceResolverFailover{
		"*": {Targets: []api.ServiceResolverFailoverTarget{{Service: "ch-fo-b"}, {Service: "ch-fo-c"}}},
	}})
	p := probe(t, "ch-fo")
	primary, b, c := target("ch-fo", ""), target("ch-fo-b", ""), target("ch-fo-c", "")
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	steps := []struct {
		healthy map[string]int
		want    string
	}{
		{map[string]int{primary: 2, b: 1, c: 1}, primary},
		{map[string]int{primary: 0}, b},
		{map[string]int{b: 0}, c},
		{map[string]int{c: 0}, primary}, // none healthy: the primary, empty
		{map[string]int{b: 1}, b},
		{map[string]int{primary: 1}, primary},
	}
	for i, step := range steps {
		for id, n := range step.healthy {
			p.SetHealthy(id, n)
		}
		if got := p.Choose(r, 0); got != step.want {
			t.Errorf("step %d (%v): went to %q, want %q", i, step.healthy, got, step.want)
		}
	}
}

func TestChainRedirectAndDefaultSubset(t *testing.T) {
	writeEntries(t, versionSubsets("ch-moved-to"),
		&api.ServiceResolverConfigEntry{Kind: api.ServiceResolver, Name: "ch-moved", Redirect: &api.ServiceResolverRedirect{Service: "ch-moved-to", ServiceSubset: "v2"}})
	if got := probe(t, "ch-moved").Targets(); !slices.Equal(got, []string{target("ch-moved-to", "v2")}) {
		t.Errorf("a redirected chain's targets = %v, want the redirect's", got)
	}
	writeEntries(t, &api.ServiceResolverConfigEntry{Kind: api.ServiceResolver, Name: "ch-sub", DefaultSubset: "v1",
		Subsets: map[string]api.ServiceResolverSubset{"v1": {Filter: `Service.Meta.version == "1"`, OnlyPassing: true}}})
	if got := probe(t, "ch-sub").Targets(); !slices.Equal(got, []string{target("ch-sub", "v1")}) {
		t.Errorf("targets with a default subset = %v, want the subset's", got)
	}
}

func TestChainListsWhatItCannotHonour(t *testing.T) {
	writeEntries(t, append(httpDefaults("ch-nh"), versionSubsets("ch-nh"),
		&api.ServiceRouterConfigEntry{Kind: api.ServiceRouter, Name: "ch-nh", Routes: []api.ServiceRoute{
			{Match: &api.ServiceRouteMatch{HTTP: &api.ServiceRouteHTTPMatch{PathPrefix: "/slow"}},
				Destination: &api.ServiceRouteDestination{ServiceSubset: "v1", NumRetries: 3, RequestTimeout: 5e9,
					ResponseHeaders: &api.HTTPHeaderModifiers{Set: map[string]string{"x-route": "slow"}}}},
		}})...)
	got := strings.Join(probe(t, "ch-nh").NotHonoured(), "\n")
	for _, want := range []string{"route 0: NumRetries", "route 0: RequestTimeout"} {
		if !strings.Contains(got, want) {
			t.Errorf("not honoured:\n%s\nwant a line with %q", got, want)
		}
	}
	if strings.Contains(got, "ResponseHeaders") {
		t.Errorf("not honoured:\n%s\nResponseHeaders are done by mesh_chain: listed only once a request came without it", got)
	}
	if strings.Contains(got, "route 1") {
		t.Errorf("not honoured:\n%s\nthe default route has nothing to list", got)
	}
}

// TestChainCanaryExample writes the README's and make demo's canary files
// as `consul config write` does, and checks what they do.
func TestChainCanaryExample(t *testing.T) {
	var entries []api.ConfigEntry
	for _, file := range []string{"1-defaults", "2-resolver", "3-splitter", "4-router"} {
		data, err := os.ReadFile("../examples/canary/" + file + ".json")
		if err != nil {
			t.Fatal(err)
		}
		entry, err := api.DecodeConfigEntryFromJSON(data)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		entries = append(entries, entry)
	}
	writeEntries(t, entries...)
	p := probe(t, "greeter")
	stable, canary := target("greeter", "stable"), target("greeter", "canary")
	shares := map[string]int{}
	for roll := range uint32(10000) {
		shares[p.Choose(httptest.NewRequest(http.MethodGet, "/canary/", nil), roll)]++
	}
	if shares[stable] != 9000 || shares[canary] != 1000 {
		t.Errorf("shares %v, want 9000 stable and 1000 canary", shares)
	}
	r := httptest.NewRequest(http.MethodGet, "/canary/", nil)
	r.Header.Set("X-Canary", "1")
	if got := p.Choose(r, 0); got != canary {
		t.Errorf("X-Canary: 1 went to %q, want the canary", got)
	}
	r = httptest.NewRequest(http.MethodGet, "/canary/v1/hello", nil)
	if got := p.Evaluate(r, 9999); got != stable || r.URL.Path != "/hello" {
		t.Errorf("/canary/v1/hello went to %q as %q, want stable as /hello", got, r.URL.Path)
	}
}
