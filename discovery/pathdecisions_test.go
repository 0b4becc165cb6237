package discovery

import (
	"bufio"
	"net/http"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"

	"github.com/caddymesh/caddymesh/internal/urlpath"
)

// TestPathDecisionsAgreeWithCaddysPathMatcher makes, on the same requests,
// the intentions' decision on a path (deny PathPrefix /admin, then allow
// PathPrefix /), on the normalized path, and Caddy's own `path /admin*`
// matcher's. Where Caddy's matcher says /admin, the intentions deny, or
// the request is refused; the rows marked differ on purpose. (gateway's
// test of the same name checks the routes and names on the same rows.)
func TestPathDecisionsAgreeWithCaddysPathMatcher(t *testing.T) {
	rules := compileIntentions(intentionsAnswer{intentions: []*api.Intention{{
		SourceName: "web",
		Permissions: []*api.IntentionPermission{
			{Action: api.IntentionActionDeny, HTTP: &api.IntentionHTTPPermission{PathPrefix: "/admin"}},
			{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{PathPrefix: "/"}},
		},
	}}}, zap.NewNop())
	caddyAdmin := caddyhttp.MatchPath{"/admin*"}

	for _, tc := range []struct {
		target     string
		caddyAdmin bool   // Caddy's path matcher, on the request as it came
		status     int    // of the normalization: 0, or the refusal
		path       string // normalized, as the upstream gets it
		allowed    bool   // by the intentions
		route      string // mesh_router's (see gateway's test)
		name       string // mesh_service's (see gateway's test)
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
		allowed := rules.allows(r, "web", "", "", false)
		if r.URL.EscapedPath() != tc.path || allowed != tc.allowed {
			t.Errorf("%q: upstream gets %q, allowed %v; want %q, %v", tc.target, r.URL.EscapedPath(), allowed, tc.path, tc.allowed)
		}
		if agree := caddySays == !allowed; !agree && tc.differs == "" {
			t.Errorf("%q: Caddy's path matcher says /admin %v, intentions allow %v", tc.target, caddySays, allowed)
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
