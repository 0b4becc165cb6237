package gateway

import (
	"fmt"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddymesh/caddymesh/internal/meshtest"
	"github.com/caddymesh/caddymesh/internal/pool"
)

// mesh_router's proxies hand Caddy candidates too, when their policy can
// preselect them, and the whole route's instances on a retry.
func TestRouterProxiesAskTheirPolicy(t *testing.T) {
	const routeSize = 40
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
		want := routeSize
		if preselects {
			want = pool.MaxCandidates
		}
		for kind, proxy := range router.proxies {
			r := routerRequest(instanceNames(routeSize))
			upstreams, err := proxy.DynamicUpstreams.GetUpstreams(r)
			if err != nil || len(upstreams) != want {
				t.Errorf("lb_policy %s, proxy %+v: %d upstreams of %d (%v), want %d", policy, kind, len(upstreams), routeSize, err, want)
			}
			proxy.DynamicUpstreams.(reverseproxy.CachingUpstreamSource).ResetCache(r)
			if upstreams, _ := proxy.DynamicUpstreams.GetUpstreams(r); len(upstreams) != routeSize {
				t.Errorf("lb_policy %s, proxy %+v: a retry got %d upstreams, want all %d", policy, kind, len(upstreams), routeSize)
			}
		}
	}
}
