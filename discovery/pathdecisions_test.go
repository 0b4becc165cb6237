package discovery

import (
	"testing"

	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"

	"github.com/caddymesh/caddymesh/internal/meshtest"
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
	for _, tc := range meshtest.PathDecisions {
		r, caddySays := meshtest.NormalizedRequest(t, tc)
		if r == nil {
			continue
		}
		allowed := rules.allows(r, "web", "", "", false)
		if r.URL.EscapedPath() != tc.Path || allowed != tc.Allowed {
			t.Errorf("%q: upstream gets %q, allowed %v; want %q, %v", tc.Target, r.URL.EscapedPath(), allowed, tc.Path, tc.Allowed)
		}
		if agree := caddySays == !allowed; !agree && tc.Differs == "" {
			t.Errorf("%q: Caddy's path matcher says /admin %v, intentions allow %v", tc.Target, caddySays, allowed)
		}
	}
}
