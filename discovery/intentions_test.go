package discovery

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"
)

// l4 is an L4 intention from source (name, or ns/name).
func l4(source string, action api.IntentionAction) *api.Intention {
	return &api.Intention{SourceName: source, Action: action}
}

// l7 is an L7 intention from source with permissions.
func l7(source string, perms ...*api.IntentionPermission) *api.Intention {
	return &api.Intention{SourceName: source, Permissions: perms}
}

func permit(action api.IntentionAction, match api.IntentionHTTPPermission) *api.IntentionPermission {
	return &api.IntentionPermission{Action: action, HTTP: &match}
}

const (
	allow = api.IntentionActionAllow
	deny  = api.IntentionActionDeny
)

// decide evaluates intentions (highest precedence first, as Consul answers
// them) for a caller's request.
func decide(intentions []*api.Intention, defaultAllow bool, caller string, r *http.Request) bool {
	rules := compileIntentions(intentionsAnswer{intentions: intentions, defaultAllow: defaultAllow}, zap.NewNop())
	return rules.allows(r, caller, "", "", rules.defaultAllow)
}

func getPath(path string) *http.Request { return httptest.NewRequest("GET", path, nil) }

func TestIntentionsFirstMatchByPrecedenceDecides(t *testing.T) {
	byPrecedence := []*api.Intention{l4("web", allow), l4("*", deny)}
	for caller, want := range map[string]bool{"web": true, "billing": false} {
		if got := decide(byPrecedence, true, caller, getPath("/")); got != want {
			t.Errorf("exact allow over wildcard deny, caller %s: allowed %v, want %v", caller, got, want)
		}
	}
	byPrecedence = []*api.Intention{l4("batch", deny), l4("*", allow)}
	if decide(byPrecedence, false, "batch", getPath("/")) || !decide(byPrecedence, false, "web", getPath("/")) {
		t.Error("exact deny over wildcard allow: want batch denied and web allowed")
	}
}

func TestIntentionsDefaultDecidesWhenNoneMatches(t *testing.T) {
	only := []*api.Intention{l4("web", allow)}
	if !decide(only, true, "billing", getPath("/")) {
		t.Error("no intention for billing, default allow: denied")
	}
	if decide(only, false, "billing", getPath("/")) {
		t.Error("no intention for billing, default deny: allowed")
	}
	if decide(nil, false, "web", getPath("/")) || !decide(nil, true, "web", getPath("/")) {
		t.Error("no intentions at all: want the default")
	}
}

func TestIntentionsMatchNamespacesAndPartitions(t *testing.T) {
	ixn := &api.Intention{SourceName: "web", SourceNS: "default", SourcePartition: "default", Action: allow}
	rules := compileIntentions(intentionsAnswer{intentions: []*api.Intention{ixn}}, zap.NewNop())
	for _, tc := range []struct {
		namespace, partition string
		want                 bool
	}{
		{"", "", true}, {"default", "default", true}, {"billing", "", false}, {"", "eng", false},
	} {
		if got := rules.allows(getPath("/"), "web", tc.namespace, tc.partition, false); got != tc.want {
			t.Errorf("caller web in namespace %q partition %q: allowed %v, want %v", tc.namespace, tc.partition, got, tc.want)
		}
	}
	wildNS := &api.Intention{SourceName: "*", SourceNS: "*", Action: allow}
	rules = compileIntentions(intentionsAnswer{intentions: []*api.Intention{wildNS}}, zap.NewNop())
	if !rules.allows(getPath("/"), "web", "billing", "", false) {
		t.Error("a */* intention did not match a caller of another namespace")
	}
}

func TestIntentionsL7PermissionsDecideInOrder(t *testing.T) {
	api7 := []*api.Intention{
		l7("web",
			permit(deny, api.IntentionHTTPPermission{PathPrefix: "/admin"}),
			permit(allow, api.IntentionHTTPPermission{PathPrefix: "/", Methods: []string{"GET", "HEAD"}}),
		),
		l4("*", allow),
	}
	for _, tc := range []struct {
		method, path string
		want         bool
	}{
		{"GET", "/orders", true},
		{"GET", "/admin/users", false},
		{"POST", "/orders", false}, // no permission matches: the default, not the wildcard intention
	} {
		r := httptest.NewRequest(tc.method, tc.path, nil)
		if got := decide(api7, false, "web", r); got != tc.want {
			t.Errorf("%s %s: allowed %v, want %v", tc.method, tc.path, got, tc.want)
		}
	}
}

func TestIntentionsHTTPMatches(t *testing.T) {
	header := func(h api.IntentionHTTPHeaderPermission) api.IntentionHTTPPermission {
		return api.IntentionHTTPPermission{Header: []api.IntentionHTTPHeaderPermission{h}}
	}
	for _, tc := range []struct {
		name  string
		match api.IntentionHTTPPermission
		req   func() *http.Request
		want  bool
	}{
		{"path exact", api.IntentionHTTPPermission{PathExact: "/a"}, func() *http.Request { return getPath("/a") }, true},
		{"path exact, longer", api.IntentionHTTPPermission{PathExact: "/a"}, func() *http.Request { return getPath("/a/b") }, false},
		{"path regex anchored", api.IntentionHTTPPermission{PathRegex: "/v[0-9]+"}, func() *http.Request { return getPath("/v2/x") }, false},
		{"path regex whole", api.IntentionHTTPPermission{PathRegex: "/v[0-9]+/.*"}, func() *http.Request { return getPath("/v2/x") }, true},
		{"header present", header(api.IntentionHTTPHeaderPermission{Name: "X-Debug", Present: true}), withHeader("X-Debug", ""), true},
		{"header absent", header(api.IntentionHTTPHeaderPermission{Name: "X-Debug", Present: true}), func() *http.Request { return getPath("/") }, false},
		{"header exact", header(api.IntentionHTTPHeaderPermission{Name: "X-Env", Exact: "prod"}), withHeader("X-Env", "prod"), true},
		{"header exact, ignore case", header(api.IntentionHTTPHeaderPermission{Name: "X-Env", Exact: "prod", IgnoreCase: true}), withHeader("X-Env", "PROD"), true},
		{"header exact, case", header(api.IntentionHTTPHeaderPermission{Name: "X-Env", Exact: "prod"}), withHeader("X-Env", "PROD"), false},
		{"header prefix", header(api.IntentionHTTPHeaderPermission{Name: "X-Env", Prefix: "pr"}), withHeader("X-Env", "prod"), true},
		{"header suffix", header(api.IntentionHTTPHeaderPermission{Name: "X-Env", Suffix: "od"}), withHeader("X-Env", "prod"), true},
		{"header contains", header(api.IntentionHTTPHeaderPermission{Name: "X-Env", Contains: "ro"}), withHeader("X-Env", "prod"), true},
		{"header regex", header(api.IntentionHTTPHeaderPermission{Name: "X-Env", Regex: "pr.d"}), withHeader("X-Env", "prod"), true},
		{"header inverted", header(api.IntentionHTTPHeaderPermission{Name: "X-Env", Exact: "prod", Invert: true}), withHeader("X-Env", "prod"), false},
		{"header inverted, other value", header(api.IntentionHTTPHeaderPermission{Name: "X-Tier", Exact: "blocked", Invert: true}), withHeader("X-Tier", "gold"), true},
		// Envoy never matches a missing header but with an inverted present
		{"header inverted, absent", header(api.IntentionHTTPHeaderPermission{Name: "X-Tier", Exact: "blocked", Invert: true}), func() *http.Request { return getPath("/") }, false},
		{"header prefix inverted, absent", header(api.IntentionHTTPHeaderPermission{Name: "X-Tier", Prefix: "b", Invert: true}), func() *http.Request { return getPath("/") }, false},
		{"header regex inverted, absent", header(api.IntentionHTTPHeaderPermission{Name: "X-Tier", Regex: "b.*", Invert: true}), func() *http.Request { return getPath("/") }, false},
		{"header present inverted, absent", header(api.IntentionHTTPHeaderPermission{Name: "X-Debug", Present: true, Invert: true}), func() *http.Request { return getPath("/") }, true},
		{"header present inverted, present", header(api.IntentionHTTPHeaderPermission{Name: "X-Debug", Present: true, Invert: true}), withHeader("X-Debug", ""), false},
		{"bad regex never matches", api.IntentionHTTPPermission{PathRegex: "("}, func() *http.Request { return getPath("/") }, false},
	} {
		ixn := []*api.Intention{l7("web", permit(allow, tc.match))}
		if got := decide(ixn, false, "web", tc.req()); got != tc.want {
			t.Errorf("%s: allowed %v, want %v", tc.name, got, tc.want)
		}
	}
}

func withHeader(name, value string) func() *http.Request {
	return func() *http.Request {
		r := getPath("/")
		r.Header.Set(name, value)
		return r
	}
}

func TestIntentionPermissionsThatNeedAJWTDeny(t *testing.T) {
	perm := permit(allow, api.IntentionHTTPPermission{PathPrefix: "/"})
	perm.JWT = &api.IntentionJWTRequirement{Providers: []*api.IntentionJWTProvider{{Name: "okta"}}}
	if decide([]*api.Intention{l7("web", perm)}, true, "web", getPath("/")) {
		t.Error("a permission that requires a JWT allowed")
	}
}

func TestIntentionsFromPeersAndSamenessGroupsNeverMatch(t *testing.T) {
	peer := l4("web", deny)
	peer.SourcePeer = "other-cluster"
	group := l4("web", deny)
	group.SourceSamenessGroup = "group"
	if !decide([]*api.Intention{peer, group}, true, "web", getPath("/")) {
		t.Error("an intention from a peer or sameness group decided for a local caller")
	}
}
