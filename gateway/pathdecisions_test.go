package gateway

import (
	"bufio"
	"net/http"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddymesh/caddymesh/internal/reqkey"
	"github.com/caddymesh/caddymesh/internal/urlpath"
)

// TestPathDecisionsAgreeWithCaddysPathMatcher makes, on the same requests,
// the gateway's decisions on a path, and Caddy's own `path /admin*`
// matcher's: mesh_router's route (/api, /admin, /) and mesh_service's name
// ({http.request.uri.path.0}), each on the normalized path. Where Caddy's
// matcher says /admin, the route is /admin and the name is admin, or the
// request is refused; the rows marked differ on purpose. (discovery's test
// of the same name checks the intentions on the same rows.)
func TestPathDecisionsAgreeWithCaddysPathMatcher(t *testing.T) {
	var found []declared
	for _, d := range []string{"/api", "/admin", "/"} {
		r, err := parseRoute(d, "dc1")
		if err != nil {
			t.Fatal(err)
		}
		found = append(found, declared{route: r, service: strings.TrimPrefix(d, "/")})
	}
	table := newRouteTable(found, nil, nil)
	serviceName := reqkey.Compile("{http.request.uri.path.0}")
	caddyAdmin := caddyhttp.MatchPath{"/admin*"}

	for _, tc := range []struct {
		target     string
		caddyAdmin bool   // Caddy's path matcher, on the request as it came
		status     int    // of the normalization: 0, or the refusal
		path       string // normalized, as the upstream gets it
		allowed    bool   // by the intentions (see discovery's test)
		route      string // mesh_router's
		name       string // mesh_service's
		differs    string // why the decisions differ from Caddy's matcher, when they do
	}{
		{target: "/admin", caddyAdmin: true, path: "/admin", route: "admin", name: "admin"},
		{target: "/public/../admin", caddyAdmin: true, path: "/admin", route: "admin", name: "admin"},
		{target: "/./admin", caddyAdmin: true, path: "/admin", route: "admin", name: "admin"},
		{target: "/x/%2e%2e/admin", caddyAdmin: true, path: "/admin", route: "admin", name: "admin"},
		{target: "/%61dmin/users", caddyAdmin: true, path: "/admin/users", route: "admin", name: "admin"},
		{target: "//admin", caddyAdmin: true, path: "/admin", route: "admin", name: "admin"},
		{target: "/api/../admin", caddyAdmin: true, path: "/admin", route: "admin", name: "admin"},
		{target: "/adminx", caddyAdmin: true, path: "/adminx", route: "admin", name: "adminx"},
		{target: "/admin%2Fx", caddyAdmin: true, path: "/admin%2Fx", route: "admin", name: "admin"},
		{target: "/x/../api/y", path: "/api/y", allowed: true, route: "api", name: "api"},
		{target: "/admin/../public", path: "/public", allowed: true, route: "", name: "public"},
		{target: "/public/x", path: "/public/x", allowed: true, route: "", name: "public"},
		{target: "/public%2F..%2Fadmin", caddyAdmin: true, status: 400},
		{target: `/public\..\admin`, status: 400},
		{target: "/x/%00/admin", status: 400},
		{target: "/ADMIN", caddyAdmin: true, path: "/ADMIN", allowed: true, route: "", name: "ADMIN",
			differs: "Caddy's path matcher ignores case; Consul's intentions and Fabio's routes do not"},
	} {
		r := readRequest(t, tc.target)
		caddySays := caddyAdmin.Match(r)
		if caddySays != tc.caddyAdmin {
			t.Errorf("%q: Caddy's path matcher says %v, want %v", tc.target, caddySays, tc.caddyAdmin)
		}
		status, _ := urlpath.NormalizeRequest(http.Header{}, r, urlpath.KeepUnchanged)
		if status != tc.status {
			t.Errorf("%q: normalization answered %d, want %d", tc.target, status, tc.status)
		}
		if status != 0 {
			continue
		}
		route := ""
		if e := table.match("", false, r.URL.Path); e != nil {
			route = e.Service
		}
		name := serviceName(r)
		if r.URL.EscapedPath() != tc.path || route != tc.route || name != tc.name {
			t.Errorf("%q: upstream gets %q, route %q, name %q; want %q, %q, %q",
				tc.target, r.URL.EscapedPath(), route, name, tc.path, tc.route, tc.name)
		}
		if agree := caddySays == (route == "admin"); !agree && tc.differs == "" {
			t.Errorf("%q: Caddy's path matcher says /admin %v, route %q", tc.target, caddySays, route)
		}
	}
}

// readRequest reads a GET of target as Caddy's server hands it to its
// handlers.
func readRequest(t *testing.T, target string) *http.Request {
	t.Helper()
	r, err := http.ReadRequest(bufio.NewReader(strings.NewReader("GET " + target + " HTTP/1.1\r\nHost: example.test\r\n\r\n")))
	if err != nil {
		t.Fatalf("%q: %v", target, err)
	}
	return caddyhttp.PrepareRequest(r, caddy.NewReplacer(), nil, nil)
}
