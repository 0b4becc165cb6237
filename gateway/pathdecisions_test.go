package gateway

import (
	"strings"
	"testing"

	"github.com/caddymesh/caddymesh/internal/meshtest"
	"github.com/caddymesh/caddymesh/internal/reqkey"
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
	for _, tc := range meshtest.PathDecisions {
		r, caddySays := meshtest.NormalizedRequest(t, tc)
		if r == nil {
			continue
		}
		route := ""
		if e := table.match("", false, r.URL.Path); e != nil {
			route = e.Service
		}
		name := serviceName(r)
		if r.URL.EscapedPath() != tc.Path || route != tc.Route || name != tc.Name {
			t.Errorf("%q: upstream gets %q, route %q, name %q; want %q, %q, %q",
				tc.Target, r.URL.EscapedPath(), route, name, tc.Path, tc.Route, tc.Name)
		}
		if agree := caddySays == (route == "admin"); !agree && tc.Differs == "" {
			t.Errorf("%q: Caddy's path matcher says /admin %v, route %q", tc.Target, caddySays, route)
		}
	}
}
