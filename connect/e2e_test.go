package connect_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/caddymesh/caddymesh/connect"
	"github.com/caddymesh/caddymesh/internal/consul"
	"github.com/caddymesh/caddymesh/internal/meshtest"
)

// propagation bounds how long a change in Consul takes to reach traffic.
const propagation = 15 * time.Second

// globals are the global options of every test config: the test admin
// port and the agent.
func globals() string {
	return fmt.Sprintf("%s\n\tauto_https disable_redirects\n\tmesh {\n\t\tconsul {\n\t\t\taddress %s\n\t\t}\n\t}", meshtest.Globals(), agent.Addr)
}

// startCallerEcho starts an application that answers with the caller
// Caddy passed it and the request's method and path.
func startCallerEcho(t *testing.T) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "caller=%s %s %s", r.Header.Get("X-Mesh-Caller"), r.Method, r.URL.Path)
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// setIntentions replaces destination's intentions.
func setIntentions(t *testing.T, destination string, sources ...*api.SourceIntention) {
	t.Helper()
	entry := &api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: destination, Sources: sources}
	if _, _, err := agent.Client.ConfigEntries().Set(entry, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = agent.Client.ConfigEntries().Delete(api.ServiceIntentions, destination, nil) })
}

// allowAll sends every caller of destination through, as the dev agent's
// default does.
func allowAll(t *testing.T, destination string) {
	setIntentions(t, destination, &api.SourceIntention{Name: "*", Action: api.IntentionActionAllow})
}

// do sends method to url and returns the status and body; status 0 and
// the error on a transport error.
func do(method, url string) (int, string) {
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		return 0, err.Error()
	}
	resp, err := meshtest.Client.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(body))
}

// awaitStatus waits until method on url answers status, and returns the
// answer.
func awaitStatus(t *testing.T, what, method, url string, status int) string {
	t.Helper()
	deadline := time.Now().Add(propagation)
	for {
		got, body := do(method, url)
		last := fmt.Sprintf("%d %s", got, body)
		if got == status {
			return last
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting until %s; last answer: %s", propagation, what, last)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// registerNative registers service as a Connect-native service at port,
// until the test ends.
func registerNative(t *testing.T, service string, port int) {
	t.Helper()
	id := fmt.Sprintf("%s-%d", service, port)
	err := agent.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: id, Name: service, Address: "127.0.0.1", Port: port,
		Connect: &api.AgentServiceConnect{Native: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = agent.Client.Agent().ServiceDeregister(id) })
}

// inboundSite is the inbound site of service on port, in front of app,
// as the contract writes it.
func inboundSite(service string, port int, app string) string {
	return fmt.Sprintf(`https://:%d {
	tls {
		get_certificate connect %s
		client_auth {
			mode require_and_verify
			trust_pool connect
		}
	}
	mesh_identity {
		from mtls
		intentions %s
	}
	reverse_proxy %s {
		header_up X-Mesh-Caller {http.vars.mesh_caller}
	}
}
`, port, service, service, app)
}

// TestOutboundThroughConsulsProxy is the first proof: the
// application calls ledger through caddymesh, which speaks Connect's
// mutual TLS as web to ledger's sidecar, Consul's own proxy, in front of a
// plain HTTP backend. A deny intention makes the proxy refuse web. (The
// service is this test's alone: Consul's agent was seen to authorize with
// a stale decision for a while after a service's intentions were deleted
// and written again, which would leak one test's deny into the next.)
func TestOutboundThroughConsulsProxy(t *testing.T) {
	ledger := meshtest.StartBackend(t, "ledger")
	sidecarPort := meshtest.FreePort()
	sidecar := agent.StartConnectProxy(t, "-service", "ledger", "-service-addr", ledger.Addr(),
		"-listen", fmt.Sprintf("127.0.0.1:%d", sidecarPort))
	outbound := meshtest.FreePort()
	meshtest.Load(t, fmt.Sprintf(`{
	%s
}
http://127.0.0.1:%d {
	reverse_proxy 127.0.0.1:%d {
		transport connect web {
			destination ledger
			# Consul's proxy decides on intentions per connection.
			keepalive off
		}
	}
}`, globals(), outbound, sidecarPort), "caddyfile")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("ledger's sidecar:\n%s", sidecar.Log())
		}
	})
	url := fmt.Sprintf("http://127.0.0.1:%d/", outbound)
	if got := awaitStatus(t, "web to reach ledger through its sidecar", "GET", url, http.StatusOK); got != "200 ledger" {
		t.Errorf("through the sidecar: %s, want 200 ledger", got)
	}

	setIntentions(t, "ledger", &api.SourceIntention{Name: "web", Action: api.IntentionActionDeny})
	awaitStatus(t, "ledger's sidecar to refuse web", "GET", url, http.StatusBadGateway)
	hits := ledger.Hits.Load()
	if status, _ := do("GET", url); status != http.StatusBadGateway || ledger.Hits.Load() != hits {
		t.Errorf("denied: %d, and ledger answered %d more; want 502 and none", status, ledger.Hits.Load()-hits)
	}
}

// TestInboundFromConsulsProxy is the second proof: web's sidecar,
// Consul's own proxy, calls api, a Connect-native service behind
// caddymesh, which verifies web's certificate against Consul's roots and
// decides with api's intentions, L4 and then L7, per request.
func TestInboundFromConsulsProxy(t *testing.T) {
	inbound := meshtest.FreePort()
	registerNative(t, "api", inbound)
	allowAll(t, "api")
	meshtest.Load(t, fmt.Sprintf("{\n\t%s\n}\n%s", globals(), inboundSite("api", inbound, startCallerEcho(t))), "caddyfile")
	upstream := meshtest.FreePort()
	caller := agent.StartConnectProxy(t, "-service", "web", "-upstream", fmt.Sprintf("api:%d", upstream))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("web's proxy:\n%s", caller.Log())
		}
	})
	base := fmt.Sprintf("http://127.0.0.1:%d", upstream)
	if got := awaitStatus(t, "web's proxy to reach api", "GET", base+"/hello", http.StatusOK); got != "200 caller=web GET /hello" {
		t.Errorf("through caddymesh: %s, want 200 from the application, called by web", got)
	}

	setIntentions(t, "api", &api.SourceIntention{Name: "web", Action: api.IntentionActionDeny})
	awaitStatus(t, "caddymesh to refuse web", "GET", base+"/hello", http.StatusForbidden)

	setServiceDefaults(t, "api", "http")
	setIntentions(t, "api", &api.SourceIntention{Name: "web", Permissions: []*api.IntentionPermission{
		{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{PathPrefix: "/public/", Methods: []string{"GET"}}},
		{Action: api.IntentionActionDeny, HTTP: &api.IntentionHTTPPermission{PathPrefix: "/"}},
	}})
	awaitStatus(t, "the L7 intention to let web GET /public/", "GET", base+"/public/a", http.StatusOK)
	for _, c := range []struct {
		method, path string
		status       int
	}{
		{"GET", "/public/a", http.StatusOK},
		{"POST", "/public/a", http.StatusForbidden},
		{"GET", "/private", http.StatusForbidden},
		{"GET", "/public/../private", http.StatusForbidden},
	} {
		if status, body := do(c.method, base+c.path); status != c.status {
			t.Errorf("%s %s: %d %s, want %d", c.method, c.path, status, body, c.status)
		}
	}
}

// setServiceDefaults sets service's protocol, which L7 intentions need.
func setServiceDefaults(t *testing.T, service, protocol string) {
	t.Helper()
	entry := &api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: service, Protocol: protocol}
	if _, _, err := agent.Client.ConfigEntries().Set(entry, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = agent.Client.ConfigEntries().Delete(api.ServiceDefaults, service, nil) })
}

// TestJSONConfigAndNoWatchOutlivesIt loads the inbound and outbound
// modules from JSON, as the golden adapt files write them, then a config
// without them: no Connect watch is left running.
func TestJSONConfigAndNoWatchOutlivesIt(t *testing.T) {
	db := meshtest.StartBackend(t, "db")
	sidecarPort, inbound, outbound := meshtest.FreePort(), meshtest.FreePort(), meshtest.FreePort()
	agent.StartConnectProxy(t, "-service", "db", "-service-addr", db.Addr(), "-listen", fmt.Sprintf("127.0.0.1:%d", sidecarPort))
	meshtest.Load(t, fmt.Sprintf(`{
	%s,
	"apps": {
		"mesh": {"consul": {"address": %q}},
		"tls": {"automation": {"policies": [{"get_certificate": [{"via": "connect", "service": "api"}]}]}},
		"http": {"servers": {
			"inbound": {
				"listen": [":%d"],
				"tls_connection_policies": [{"client_authentication": {"ca": {"provider": "connect"}, "mode": "require_and_verify"}}],
				"routes": [{"handle": [{"handler": "static_response", "body": "api"}]}]
			},
			"outbound": {
				"listen": ["127.0.0.1:%d"],
				"automatic_https": {"disable": true},
				"routes": [{"handle": [{"handler": "reverse_proxy",
					"transport": {"protocol": "connect", "service": "web", "destination": "db", "dial_timeout": "2s"},
					"upstreams": [{"dial": "127.0.0.1:%d"}]}]}]
			}
		}}
	}
}`, meshtest.AdminJSON(), agent.Addr, inbound, outbound, sidecarPort), "json")
	if got := awaitStatus(t, "the JSON outbound to reach db", "GET", fmt.Sprintf("http://127.0.0.1:%d/", outbound), http.StatusOK); got != "200 db" {
		t.Errorf("JSON outbound: %s, want 200 db", got)
	}
	shown, _ := adminConnect(t)
	if len(shown.Leaves) != 2 || len(shown.Roots) != 1 {
		t.Errorf("with the JSON config, /mesh/connect shows %+v, want the leaves of api and web and one set of roots", shown)
	}
	meshtest.Load(t, fmt.Sprintf("{\n\t%s\n}\n:%d {\n\trespond ok\n}", meshtest.Globals(), meshtest.FreePort()), "caddyfile")
	meshtest.Eventually(t, propagation, "the Connect watches to stop", func() bool {
		return meshtest.Goroutines(consul.PollLoop) == 0
	})
	if shown, _ := adminConnect(t); len(shown.Leaves)+len(shown.Roots) != 0 {
		t.Errorf("after a config without Connect, /mesh/connect shows %+v", shown)
	}
}

// TestWatchesSurviveReloads: a reload that keeps a service's leaf keeps
// its watch, and with it the leaf, without asking Consul again.
func TestWatchesSurviveReloads(t *testing.T) {
	port := meshtest.FreePort()
	config := func(body string) string {
		return fmt.Sprintf("{\n\t%s\n}\nhttps://:%d {\n\ttls {\n\t\tget_certificate connect api\n\t}\n\trespond %s\n}", globals(), port, body)
	}
	meshtest.Load(t, config("one"), "caddyfile")
	before := connect.LeafWatchOf("api")
	meshtest.Load(t, config("two"), "caddyfile")
	if after := connect.LeafWatchOf("api"); before == nil || after != before {
		t.Errorf("the leaf watch of api was %p before the reload and %p after, want the same one", before, after)
	}
}

// TestContract runs the contract as written, on free ports: api
// registered Connect-native by the registrar, called by web's sidecar
// (Consul's proxy), which finds it in /v1/health/connect/api; and api's
// application calling db through `dynamic consul db { connect }`, which
// finds db's sidecar (Consul's proxy) there, and `transport connect api`,
// which verifies db's identity from that catalog.
func TestContract(t *testing.T) {
	db := meshtest.StartBackend(t, "db")
	inbound, outbound, sidecarPort, upstream := meshtest.FreePort(), meshtest.FreePort(), meshtest.FreePort(), meshtest.FreePort()
	allowAll(t, "api")
	agent.StartConnectProxy(t, "-service", "db", "-service-addr", db.Addr(), "-listen", fmt.Sprintf("127.0.0.1:%d", sidecarPort), "-register")
	meshtest.Load(t, fmt.Sprintf(`{
	%s
	auto_https disable_redirects
	mesh {
		consul {
			address %s
		}
		register api {
			port %d
			connect native
		}
	}
}
https://:%d {
	tls {
		get_certificate connect api
		client_auth {
			mode require_and_verify
			trust_pool connect
		}
	}
	mesh_identity {
		from mtls
		intentions
	}
	reverse_proxy %s
}
http://127.0.0.1:%d {
	reverse_proxy {
		dynamic consul db {
			connect
		}
		transport connect api
	}
}`, meshtest.Globals(), agent.Addr, inbound, inbound, startCallerEcho(t), outbound), "caddyfile")
	if got := awaitStatus(t, "api to reach db through the mesh", "GET", fmt.Sprintf("http://127.0.0.1:%d/", outbound), http.StatusOK); got != "200 db" {
		t.Errorf("outbound: %s, want 200 db", got)
	}
	agent.StartConnectProxy(t, "-service", "web", "-upstream", fmt.Sprintf("api:%d", upstream))
	if got := awaitStatus(t, "web's proxy to find api in Connect's catalog", "GET", fmt.Sprintf("http://127.0.0.1:%d/hello", upstream), http.StatusOK); got != "200 caller= GET /hello" {
		t.Errorf("inbound: %s, want 200 from the application", got)
	}
}
