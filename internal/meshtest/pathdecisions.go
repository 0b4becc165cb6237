package meshtest

import (
	"bufio"
	"net/http"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddymesh/caddymesh/internal/urlpath"
)

// PathDecision is a request target and the decisions made on its path:
// Caddy's own `path /admin*` matcher's on the request as it came, the
// normalization's, and those that discovery's intentions (deny PathPrefix
// /admin, then allow /) and the gateway's routes (/api, /admin, /) and
// names ({http.request.uri.path.0}) make on the normalized path.
type PathDecision struct {
	// Target is the request target, as a client sends it.
	Target string
	// CaddyAdmin is Caddy's path matcher's decision, on the request as it came.
	CaddyAdmin bool
	// Status is the normalization's: 0, or the refusal.
	Status int
	// Path is the normalized path, as the upstream gets it.
	Path string
	// Allowed is the intentions' decision.
	Allowed bool
	// Route is mesh_router's route.
	Route string
	// Name is mesh_service's service name.
	Name string
	// Differs says why the decisions differ from Caddy's matcher, when they do.
	Differs string
}

// PathDecisions are the rows that discovery's and gateway's
// TestPathDecisionsAgreeWithCaddysPathMatcher both check.
var PathDecisions = []PathDecision{
	{Target: "/admin", CaddyAdmin: true, Path: "/admin", Route: "admin", Name: "admin"},
	{Target: "/public/../admin", CaddyAdmin: true, Path: "/admin", Route: "admin", Name: "admin"},
	{Target: "/./admin", CaddyAdmin: true, Path: "/admin", Route: "admin", Name: "admin"},
	{Target: "/x/%2e%2e/admin", CaddyAdmin: true, Path: "/admin", Route: "admin", Name: "admin"},
	{Target: "/%61dmin/users", CaddyAdmin: true, Path: "/admin/users", Route: "admin", Name: "admin"},
	{Target: "//admin", CaddyAdmin: true, Path: "/admin", Route: "admin", Name: "admin"},
	{Target: "/api/../admin", CaddyAdmin: true, Path: "/admin", Route: "admin", Name: "admin"},
	{Target: "/adminx", CaddyAdmin: true, Path: "/adminx", Route: "admin", Name: "adminx"},
	{Target: "/admin%2Fx", CaddyAdmin: true, Path: "/admin%2Fx", Route: "admin", Name: "admin"},
	{Target: "/x/../api/y", Path: "/api/y", Allowed: true, Route: "api", Name: "api"},
	{Target: "/admin/../public", Path: "/public", Allowed: true, Route: "", Name: "public"},
	{Target: "/public/x", Path: "/public/x", Allowed: true, Route: "", Name: "public"},
	{Target: "/public%2F..%2Fadmin", CaddyAdmin: true, Status: 400},
	{Target: `/public\..\admin`, Status: 400},
	{Target: "/x/%00/admin", Status: 400},
	{Target: "/ADMIN", CaddyAdmin: true, Path: "/ADMIN", Allowed: true, Route: "", Name: "ADMIN",
		Differs: "Caddy's path matcher ignores case; Consul's intentions and Fabio's routes do not"},
}

// NormalizedRequest reads a GET of tc.Target as Caddy's server hands it to
// its handlers, checks Caddy's `path /admin*` matcher and the normalization
// against tc, and returns the normalized request with Caddy's decision; the
// request is nil when the normalization refused it.
func NormalizedRequest(t *testing.T, tc PathDecision) (r *http.Request, caddyAdmin bool) {
	t.Helper()
	r, err := http.ReadRequest(bufio.NewReader(strings.NewReader("GET " + tc.Target + " HTTP/1.1\r\nHost: example.test\r\n\r\n")))
	if err != nil {
		t.Fatalf("%q: %v", tc.Target, err)
	}
	r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), nil, nil)
	caddyAdmin = caddyhttp.MatchPath{"/admin*"}.Match(r)
	if caddyAdmin != tc.CaddyAdmin {
		t.Errorf("%q: Caddy's path matcher says %v, want %v", tc.Target, caddyAdmin, tc.CaddyAdmin)
	}
	status, _ := urlpath.NormalizeRequest(http.Header{}, r, urlpath.KeepUnchanged)
	if status != tc.Status {
		t.Errorf("%q: normalization answered %d, want %d", tc.Target, status, tc.Status)
	}
	if status != 0 {
		return nil, caddyAdmin
	}
	return r, caddyAdmin
}
