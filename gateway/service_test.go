package gateway_test

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddymesh/caddymesh/internal/consultest"
	"github.com/caddymesh/caddymesh/internal/meshtest"
)

// pathEcho is an application on loopback that answers with its name and
// the path it was asked for.
type pathEcho struct {
	name string
	srv  *httptest.Server
}

func startPathEcho(t *testing.T, name string) *pathEcho {
	e := &pathEcho{name: name}
	e.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s", name, r.URL.Path)
	}))
	t.Cleanup(e.srv.Close)
	return e
}

func (e *pathEcho) port() int { return e.srv.Listener.Addr().(*net.TCPAddr).Port }

// registerEcho starts an application and registers it in Consul as an
// instance of service with tags and meta.
func registerEcho(t *testing.T, service, name string, tags []string, meta map[string]string) *pathEcho {
	e := startPathEcho(t, name)
	agent.Register(t, consultest.Instance{Service: service, ID: service + "-" + name, Port: e.port(), Tags: tags, Meta: meta})
	t.Cleanup(func() { agent.Client.Agent().ServiceDeregister(service + "-" + name) })
	return e
}

// get sends a GET to url with the given Host, and returns the status and
// body.
func get(url, host string) (int, string) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, err.Error()
	}
	req.Host = host
	return meshtest.Do(meshtest.Client, req)
}

// gatewaySite is a gateway that takes the service from the first path
// segment, over consul.
func gatewaySite(port int, consul, options string) string {
	return fmt.Sprintf(`{
	%s
	mesh {
		consul {
			address %s
		}
	}
}
:%d {
	mesh_service {http.request.uri.path.0} {
		%s
	}
	reverse_proxy {
		dynamic consul {http.vars.mesh_service}
	}
}`, meshtest.Globals(), consul, port, options)
}

func TestServiceFromThePathReachesOnlyServicesAllowed(t *testing.T) {
	registerEcho(t, "gw-greeter", "greeter-1", nil, nil)
	registerEcho(t, "gw-users", "users-1", []string{"public"}, nil)
	registerEcho(t, "gw-billing", "billing-1", nil, nil)
	base := startGateway(t, "allow_services gw-greet*\n\t\trequire_tag public\n\t\tstrip_path", "/gw-greeter/hello")
	expectGatewayAnswers(t, base, []gatewayCase{
		{"/gw-greeter/hello/world", 200, "greeter-1 /hello/world"},
		{"/gw-greeter", 200, "greeter-1 /"},
		{"/gw-users/42", 200, "users-1 /42"}, // by tag
		{"/gw-billing/invoices", 404, ""},    // neither allowed nor tagged
		{"/gw-greeterx/hello", 404, ""},      // allowed by pattern, but unknown to Consul
		{"/gw_greeter!/hello", 404, ""},      // not a service name
		{"/", 404, ""},
	})
}

// startGateway loads gatewaySite over the test agent with options, waits
// until a request for ready is served, and returns the gateway's URL.
func startGateway(t *testing.T, options, ready string) string {
	p := meshtest.FreePort()
	meshtest.Load(t, gatewaySite(p, agent.Addr, options), "caddyfile")
	base := fmt.Sprintf("http://127.0.0.1:%d", p)
	meshtest.Eventually(t, propagation, "the catalog to list the services", func() bool {
		status, _ := get(base+ready, "")
		return status == http.StatusOK
	})
	return base
}

// gatewayCase is a request path to a gateway and the answer it gets; an
// empty body is not checked.
type gatewayCase struct {
	path   string
	status int
	body   string
}

// expectGatewayAnswers sends each case's request to base and checks its
// answer.
func expectGatewayAnswers(t *testing.T, base string, cases []gatewayCase) {
	t.Helper()
	for _, tc := range cases {
		status, body := get(base+tc.path, "")
		if status != tc.status || (tc.body != "" && body != tc.body) {
			t.Errorf("%s: %d %q, want %d %q", tc.path, status, body, tc.status, tc.body)
		}
	}
}

func TestTheGatewayReachesConsulItselfOnlyWhenAllowedByExactName(t *testing.T) {
	registerEcho(t, "gw-open", "open-1", []string{"public"}, nil)
	p := meshtest.FreePort()
	meshtest.Load(t, gatewaySite(p, agent.Addr, "allow_services *\n\t\trequire_tag public"), "caddyfile")
	base := fmt.Sprintf("http://127.0.0.1:%d", p)
	meshtest.Eventually(t, propagation, "the catalog to list the services", func() bool {
		status, _ := get(base+"/gw-open/", "")
		return status == http.StatusOK
	})
	if status, body := get(base+"/consul/v1/status/leader", ""); status != http.StatusNotFound {
		t.Errorf("/consul with allow_services *: %d %q, want 404: Consul's server RPC port is no service to proxy to", status, body)
	}

	meshtest.Load(t, gatewaySite(p, agent.Addr, "allow_services consul"), "caddyfile")
	meshtest.Eventually(t, propagation, "consul, allowed by name, to be reached", func() bool {
		status, _ := get(base+"/consul/", "")
		return status != http.StatusNotFound && status != http.StatusServiceUnavailable
	})
}

func TestAFloodOfServiceNamesTouchesConsulOnlyWithinBounds(t *testing.T) {
	registerEcho(t, "flood-known", "known-1", nil, nil)
	consul := meshtest.StartConsulProxy(t, agent.Addr)
	gate, source := meshtest.FreePort(), meshtest.FreePort()
	meshtest.Load(t, gatewaySite(gate, consul.Addr(), "allow_services flood-*")+fmt.Sprintf(`
:%d {
	reverse_proxy {
		dynamic consul {http.request.uri.path.0} {
			max_services 3
			resolve_timeout 1s
		}
	}
}`, source), "caddyfile")
	meshtest.Eventually(t, propagation, "the gate to know flood-known", func() bool {
		status, _ := get(fmt.Sprintf("http://127.0.0.1:%d/flood-known/", gate), "")
		return status == http.StatusOK
	})
	// Queries for the random names only: flood-known's watch polls on its own.
	floodQueries := func() int {
		return consul.Requests("/v1/health/service/flood-") - consul.Requests("/v1/health/service/flood-known")
	}
	before := floodQueries()
	for range 500 {
		name := fmt.Sprintf("flood-%08x", rand.Uint32())
		if status, _ := get(fmt.Sprintf("http://127.0.0.1:%d/%s/", gate, name), ""); status != http.StatusNotFound {
			t.Fatalf("a random service %s through the gate: %d, want 404", name, status)
		}
	}
	if n := floodQueries() - before; n != 0 {
		t.Errorf("500 random names through mesh_service made %d health queries to Consul, want none", n)
	}

	before = floodQueries()
	watchersBefore := meshtest.Goroutines(watchLoop)
	for range 200 {
		get(fmt.Sprintf("http://127.0.0.1:%d/flood-%08x/", source, rand.Uint32()), "")
	}
	if n := meshtest.Goroutines(watchLoop) - watchersBefore; n > 3 {
		t.Errorf("200 random names through the source started %d watchers, want at most max_services, 3", n)
	}
	if n := floodQueries() - before; n > 3*2 {
		t.Errorf("200 random names through the source made %d health queries, want a couple per watched service at most", n)
	}
}

func TestServicesNamedByRequestsAreWatchedLazilyAndLetGoWhenIdle(t *testing.T) {
	registerEcho(t, "lazy-a", "a-1", nil, nil)
	p := meshtest.FreePort()
	meshtest.Load(t, fmt.Sprintf(`{
	%s
	mesh {
		consul {
			address %s
		}
	}
}
:%d {
	reverse_proxy {
		dynamic consul {http.request.host.labels.2} {
			idle_timeout 300ms
		}
	}
}`, meshtest.Globals(), agent.Addr, p), "caddyfile")
	url := fmt.Sprintf("http://127.0.0.1:%d/x", p)
	if watched := len(watchViewsOf(t, "lazy-a")); watched != 0 {
		t.Fatalf("lazy-a watched %d times before any request for it", watched)
	}
	// The first request waits for Consul's first answer: no 503.
	if status, body := get(url, "lazy-a.mesh.test"); status != http.StatusOK || body != "a-1 /x" {
		t.Fatalf("first request for lazy-a: %d %q, want a-1", status, body)
	}
	if watched := len(watchViewsOf(t, "lazy-a")); watched != 1 {
		t.Errorf("lazy-a watched %d times after a request for it, want 1", watched)
	}
	if status, _ := get(url, "lazy-b.mesh.test"); status != http.StatusBadGateway && status != http.StatusServiceUnavailable {
		t.Errorf("a service Consul does not know: %d, want no upstreams", status)
	}
	meshtest.Eventually(t, 5*time.Second, "idle services to be let go", func() bool {
		return len(watchViewsOf(t, "lazy-a")) == 0 && len(watchViewsOf(t, "lazy-b")) == 0
	})
	if status, _ := get(url, "lazy-a.mesh.test"); status != http.StatusOK {
		t.Errorf("lazy-a again after it was let go: %d, want 200", status)
	}
}

// TestGoMicroServicesThroughANamespace reaches two services registered as
// go-micro registers them, with dotted names, as go-micro's API gateway
// with --namespace go.micro.api reaches them: GET /greeter/say/hello goes
// to go.micro.api.greeter as /say/hello.
func TestGoMicroServicesThroughANamespace(t *testing.T) {
	registerEcho(t, "go.micro.api.greeter", "greeter-1", nil, nil)
	registerEcho(t, "go.micro.api.orders", "orders-1", []string{"public"}, nil)
	registerEcho(t, "go.micro.srv.billing", "billing-1", []string{"public"}, nil)
	base := startGateway(t, "namespace go.micro.api\n\t\tallow_services go.micro.api.greeter\n\t\trequire_tag public\n\t\tstrip_path", "/greeter/say/hello")
	expectGatewayAnswers(t, base, []gatewayCase{
		{"/greeter/say/hello", 200, "greeter-1 /say/hello"},
		{"/orders/42", 200, "orders-1 /42"},     // by tag
		{"/billing/x", 404, ""},                 // tagged, but outside the namespace
		{"/go.micro.api.greeter/x", 404, ""},    // the full name is not what a request gives
		{"/srv.billing/x", 404, ""},             // go.micro.api.srv.billing is unknown
		{"/../go.micro.api.greeter/x", 404, ""}, // not a service name
	})
}
