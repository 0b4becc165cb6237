package gateway_test

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/caddymesh/caddymesh/internal/consultest"
	"github.com/caddymesh/caddymesh/internal/meshtest"
)

// fabioRouter serves, through mesh_router over the test agent (datacenter
// dc1), the routes of Fabio's proxy/http_integration_test.go and of its
// declaration forms, each declared by a service of its own whose
// application answers with its name, then the Host and the path it was
// asked for. It returns the router's base URL.
func fabioRouter(t *testing.T) string {
	registered := map[string]bool{} // the dial addresses of this test's applications
	for service, declaration := range map[string]string{
		"fabio-strip":      "/foo/bar strip=/foo",         // TestProxyStripsPath
		"fabio-prepend":    "/bar prepend=/foo",           // TestProxyPrependsPath
		"fabio-hostdst":    "/hostdst host=dst",           // TestProxyHost
		"fabio-hostcustom": "/hostcustom host=foo.com",    // TestProxyHost
		"fabio-root":       "/",                           // TestProxyHost, no host
		"fabio-hostalone":  "shop.fabio.test",             // a host alone
		"fabio-hostport":   "xyz.fabio.test:8080/",        // a host with a port
		"fabio-dc":         "${DC}.fabio.test/$DC",        // the datacenter
		"fabio-both":       "/api strip=/api prepend=/v2", // strip, then prepend
	} {
		app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%s %s %s", service, r.Host, r.URL.EscapedPath())
		}))
		t.Cleanup(app.Close)
		registered[app.Listener.Addr().String()] = true
		agent.Register(t, consultest.Instance{Service: service, ID: service + "-1", Port: app.Listener.Addr().(*net.TCPAddr).Port,
			Tags: []string{"urlprefix-" + declaration, "fabio"}})
		t.Cleanup(func() { agent.Client.Agent().ServiceDeregister(service + "-1") })
	}
	p := meshtest.FreePort()
	meshtest.Load(t, fmt.Sprintf("{\n\t%s\n}\n", meshtest.Globals())+routerSite(p, "require_tag fabio"), "caddyfile")
	base := fmt.Sprintf("http://127.0.0.1:%d", p)
	// The routes of an earlier test of the same services may still be
	// there: wait for these applications' instances.
	meshtest.Eventually(t, propagation, "the 9 routes, to this test's applications", func() bool {
		tables := routeTables(t)
		if len(tables) != 1 || len(tables[0].Routes) != 9 || len(tables[0].Rejected) != 0 {
			return false
		}
		for _, r := range tables[0].Routes {
			if len(r.Instances) != 1 || !registered[r.Instances[0]] {
				return false
			}
		}
		return true
	})
	return base
}

// TestRouterProxiesAsFabio sends requests to Fabio's routes and checks the
// route chosen and the request its upstream gets: Host and path.
func TestRouterProxiesAsFabio(t *testing.T) {
	base := fabioRouter(t)
	upstreamHost := func(service string) string { // host=dst: the instance's own address
		services, _ := agent.Client.Agent().Services()
		s := services[service+"-1"]
		return fmt.Sprintf("%s:%d", s.Address, s.Port)
	}
	for _, tc := range []struct{ host, path, want string }{
		{"fabio.test", "/foo/bar", "fabio-strip fabio.test /bar"},
		{"fabio.test", "/bar", "fabio-prepend fabio.test /foo/bar"},
		{"fabio.test", "/hostdst", "fabio-hostdst " + upstreamHost("fabio-hostdst") + " /hostdst"},
		{"fabio.test", "/hostcustom", "fabio-hostcustom foo.com /hostcustom"},
		{"fabio.test", "/", "fabio-root fabio.test /"},
		{"shop.fabio.test", "/any/path", "fabio-hostalone shop.fabio.test /any/path"},
		{"xyz.fabio.test:8080", "/x", "fabio-hostport xyz.fabio.test:8080 /x"},
		{"xyz.fabio.test", "/x", "fabio-root xyz.fabio.test /x"},
		{"dc1.fabio.test", "/dc1/y", "fabio-dc dc1.fabio.test /dc1/y"},
		{"dc1.fabio.test", "/y", "fabio-root dc1.fabio.test /y"},
		{"fabio.test", "/api/users", "fabio-both fabio.test /v2/users"},
	} {
		if status, body := get(base+tc.path, tc.host); status != http.StatusOK || body != tc.want {
			t.Errorf("%s%s: %d %q, want %q", tc.host, tc.path, status, body, tc.want)
		}
	}
}

// TestRouterCleansPathsAsFabio sends the requests of Fabio's
// TestProxyPathNormalization through its routes: Fabio cleans the path it
// routes on and sends upstream. Fabio's test has a root route only, these
// routes have more: /foo%2Fbar is /foo/bar, the strip route's.
func TestRouterCleansPathsAsFabio(t *testing.T) {
	base := fabioRouter(t)
	for _, tc := range []struct{ path, want string }{
		{"/foo%2Fbar", "fabio-strip fabio.test /bar"},                // percent-encoded path
		{"/foo/../bar", "fabio-prepend fabio.test /foo/bar"},         // path with traversal: routed as /bar
		{"/foo//bar", "fabio-strip fabio.test /bar"},                 // double slashes: routed as /foo/bar
		{"/api/users/", "fabio-both fabio.test /v2/users/"},          // trailing slash preserved
		{"/x/../hostcustom", "fabio-hostcustom foo.com /hostcustom"}, // a decision on the cleaned path
		{"/hostdst/../hostcustom", "fabio-hostcustom foo.com /hostcustom"},
	} {
		if status, body := get(base+tc.path, "fabio.test"); status != http.StatusOK || body != tc.want {
			t.Errorf("%s: %d %q, want %q", tc.path, status, body, tc.want)
		}
	}
	// Fabio unescapes %2F and routes /api%2F..%2Fv2//users/ as /v2/users/;
	// with Consul's default (KEEP_UNCHANGED) a path whose escaped slashes
	// would decode into dot segments has two meanings, and is refused (the
	// README's table for people coming from Fabio).
	if status, _ := get(base+"/api%2F..%2Fv2//users/", "fabio.test"); status != http.StatusBadRequest {
		t.Errorf("/api%%2F..%%2Fv2//users/: %d, want 400", status)
	}
}
