package gateway

import (
	"fmt"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddymesh/caddymesh/internal/meshtest"
)

// mesh_router's proxies hand Caddy candidates too, when their policy can
// preselect them.
func TestRouterProxiesAskTheirPolicy(t *testing.T) {
	for policy, preselects := range map[string]bool{"smooth_weighted": true, "round_robin": false} {
		meshtest.Load(t, fmt.Sprintf(`{%s, "apps": {"http": {"servers": {"srv": {"listen": [":%d"], "routes": [
			{"handle": [{"handler": "mesh_router", "consul": {"address": "127.0.0.1:1"},
				"proxy": {"load_balancing": {"selection_policy": {"policy": %q}}}}]}]}}}}}`,
			meshtest.AdminJSON(), meshtest.FreePort(), policy), "json")
		app, err := caddy.ActiveContext().App("http")
		if err != nil {
			t.Fatal(err)
		}
		router := app.(*caddyhttp.App).Servers["srv"].Routes[0].Handlers[0].(*Router)
		if n := len(router.proxies); n != len(proxyKinds()) || n != 6 {
			t.Fatalf("lb_policy %s: %d proxies, want one per kind of route, 6", policy, n)
		}
		for kind, proxy := range router.proxies {
			if got := proxy.DynamicUpstreams.(routeUpstreams).preselector != nil; got != preselects {
				t.Errorf("lb_policy %s, proxy %+v: preselects %v, want %v", policy, kind, got, preselects)
			}
		}
	}
}
