package gateway_test

import (
	"fmt"
	"net/http"
	"testing"

	"github.com/caddymesh/caddymesh/internal/meshtest"
)

// mesh_router chooses the route on the normalized path, and proxies the
// normalized path: /api/../admin is not the /api service's.
func TestRouterRoutesTheNormalizedPath(t *testing.T) {
	registerEcho(t, "np-api", "api-1", []string{"urlprefix-paths.test/api"}, nil)
	registerEcho(t, "np-root", "root-1", []string{"urlprefix-paths.test/"}, nil)
	port := meshtest.FreePort()
	meshtest.Load(t, fmt.Sprintf("{\n\t%s\n}\n", meshtest.Globals())+routerSite(port, ""), "caddyfile")
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	expectRoutes(t, base, map[[2]string]string{
		{"paths.test", "/api/users"}:    "api-1 /api/users",
		{"paths.test", "/api/../admin"}: "root-1 /admin",
		{"paths.test", "/x/../api/y"}:   "api-1 /api/y",
		{"paths.test", "/%61pi//y/."}:   "api-1 /api/y/",
	})
	if status, body := get(base+"/api%2F..%2Fadmin", "paths.test"); status != http.StatusBadRequest {
		t.Errorf("/api%%2F..%%2Fadmin: %d %q, want 400", status, body)
	}
}

// mesh_service takes the service's name from the normalized path, and
// passes the normalized path on.
func TestServiceFromTheNormalizedPath(t *testing.T) {
	registerEcho(t, "np-greeter", "greeter-1", nil, nil)
	registerEcho(t, "np-billing", "billing-1", nil, nil)
	p := meshtest.FreePort()
	meshtest.Load(t, gatewaySite(p, agent.Addr, "allow_services np-greeter\n\t\tstrip_path"), "caddyfile")
	base := fmt.Sprintf("http://127.0.0.1:%d", p)
	meshtest.Eventually(t, propagation, "the catalog to list the services", func() bool {
		status, _ := get(base+"/np-greeter/hello", "")
		return status == http.StatusOK
	})
	for _, tc := range []struct {
		path   string
		status int
		body   string
	}{
		{"/x/../np-greeter/hello", 200, "greeter-1 /hello"},
		{"/./np-greeter/a/./b/../c", 200, "greeter-1 /a/c"},
		{"/np-greeter/../np-billing/invoices", 404, ""}, // billing may not be reached
		{"/np-greeter/%2e%2e/np-billing/invoices", 404, ""},
		{"/np-greeter%2F..%2Fnp-billing/invoices", 400, ""},
	} {
		status, body := get(base+tc.path, "")
		if status != tc.status || (tc.body != "" && body != tc.body) {
			t.Errorf("%s: %d %q, want %d %q", tc.path, status, body, tc.status, tc.body)
		}
	}
}

// mesh_service follows the mesh app's path_with_escaped_slashes_action:
// kept by default, refused with REJECT_REQUEST.
func TestServiceFollowsTheMeshAppsEscapedSlashesAction(t *testing.T) {
	registerEcho(t, "np-files", "files-1", nil, nil)
	keeping, rejecting := meshtest.FreePort(), meshtest.FreePort()
	site := `:%d {
	mesh_service {http.request.uri.path.0} {
		allow_services np-files
	}
	reverse_proxy {
		dynamic consul {http.vars.mesh_service}
	}
}
`
	meshtest.Load(t, gatewaySite(keeping, agent.Addr, "allow_services np-files"), "caddyfile")
	meshtest.Eventually(t, propagation, "the catalog to list np-files", func() bool {
		status, _ := get(fmt.Sprintf("http://127.0.0.1:%d/np-files/a%%2Fb", keeping), "")
		return status == http.StatusOK
	})
	if status, body := get(fmt.Sprintf("http://127.0.0.1:%d/np-files/a%%2Fb", keeping), ""); body != "files-1 /np-files/a/b" {
		t.Errorf("escaped slash kept: %d %q", status, body)
	}
	meshtest.Load(t, fmt.Sprintf(`{
	%s
	mesh {
		consul {
			address %s
		}
		path_with_escaped_slashes_action REJECT_REQUEST
	}
}
`, meshtest.Globals(), agent.Addr)+fmt.Sprintf(site, rejecting), "caddyfile")
	meshtest.Eventually(t, propagation, "the catalog to list np-files", func() bool {
		status, _ := get(fmt.Sprintf("http://127.0.0.1:%d/np-files/a", rejecting), "")
		return status == http.StatusOK
	})
	if status, body := get(fmt.Sprintf("http://127.0.0.1:%d/np-files/a%%2Fb", rejecting), ""); status != http.StatusBadRequest {
		t.Errorf("escaped slash with REJECT_REQUEST: %d %q, want 400", status, body)
	}
}
