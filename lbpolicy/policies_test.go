package lbpolicy

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddymesh/caddymesh/internal/pool"
)

// upstreamsNamed returns static upstreams dialing name:80 for each name,
// with the host state Caddy gives upstreams before selection.
func upstreamsNamed(names ...string) reverseproxy.UpstreamPool {
	out := make(reverseproxy.UpstreamPool, len(names))
	for i, name := range names {
		out[i] = &reverseproxy.Upstream{Dial: name + ":80", Host: new(reverseproxy.Host)}
	}
	return out
}

// caddyRequest returns a request carrying what a Caddy server gives one:
// the variable table (with the client IP) and the replacer.
func caddyRequest(clientIP string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "/some/path?q=1", nil)
	vars := map[string]any{caddyhttp.ClientIPVarKey: clientIP}
	r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, vars))
	caddyhttp.NewTestReplacer(r)
	return r
}

// picks returns the names of the upstreams n selections choose.
func picks(s reverseproxy.Selector, upstreams reverseproxy.UpstreamPool, r *http.Request, n int) string {
	var out []string
	for range n {
		u := s.Select(upstreams, r, nil)
		out = append(out, strings.TrimSuffix(u.Dial, ":80"))
	}
	return strings.Join(out, " ")
}

func TestSmoothWeightedSelect(t *testing.T) {
	upstreams := upstreamsNamed("a", "b", "c")
	t.Run("configured_weights_follow_nginx_sequence", func(t *testing.T) {
		sw := &SmoothWeighted{Weights: Weights{"a:80": 5, "b:80": 1, "c:80": 1}}
		if got := picks(sw, upstreams, caddyRequest(""), 7); got != "a a b a c a a" {
			t.Errorf("got %s, want a a b a c a a", got)
		}
	})
	t.Run("consul_weights_apply_when_not_configured", func(t *testing.T) {
		r := caddyRequest("")
		pool.Attach(r, pool.NewSnapshot([]pool.Instance{{Dial: "a:80", Weight: 3}, {Dial: "b:80", Weight: 2}, {Dial: "c:80", Weight: 1}}))
		sw := &SmoothWeighted{Weights: Weights{"c:80": 0}}
		if got := picks(sw, upstreams, r, 5); got != "a b a b a" {
			t.Errorf("got %s, want a b a b a (Consul's 3, 2, and c configured to 0)", got)
		}
	})
	t.Run("a_snapshot_of_other_upstreams_is_ignored", func(t *testing.T) {
		r := caddyRequest("")
		pool.Attach(r, pool.NewSnapshot([]pool.Instance{{Dial: "x:80", Weight: 9}, {Dial: "b:80"}, {Dial: "c:80"}}))
		if got := picks(&SmoothWeighted{}, upstreams, r, 3); got != "a b c" {
			t.Errorf("got %s, want a b c (weight 1 each)", got)
		}
	})
	t.Run("zero_weights_select_nothing", func(t *testing.T) {
		sw := &SmoothWeighted{Weights: Weights{"a:80": 0, "b:80": 0, "c:80": 0}}
		if u := sw.Select(upstreams, caddyRequest(""), nil); u != nil {
			t.Errorf("selected %s, want none", u.Dial)
		}
	})
}

// TestCaddyWeightedRoundRobinIsNotSmooth records the behaviour the README
// contrasts smooth_weighted with.
func TestCaddyWeightedRoundRobinIsNotSmooth(t *testing.T) {
	wrr := &reverseproxy.WeightedRoundRobinSelection{Weights: []int{5, 1, 1}}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := wrr.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if got := picks(wrr, upstreamsNamed("a", "b", "c"), caddyRequest(""), 14); !strings.Contains(got, "a a a a a b c") {
		t.Errorf("Caddy's weighted_round_robin gave %s, whose cycle is not a a a a a b c", got)
	}
}

func TestSchedulesAreBuiltOncePerPool(t *testing.T) {
	sw := &SmoothWeighted{}
	static := upstreamsNamed("a", "b")
	r := caddyRequest("")
	sw.Select(static, r, nil)
	first := sw.schedules.last.Load()
	sw.Select(static, r, nil)
	if sw.schedules.last.Load() != first {
		t.Error("the same static pool was built again")
	}
	sw.Select(upstreamsNamed("a", "b"), r, nil) // a dynamic source: new values, same addresses
	if sw.schedules.last.Load() != first {
		t.Error("the same addresses from another source were built again")
	}
	snapshot := pool.NewSnapshot([]pool.Instance{{Dial: "a:80", Weight: 1}, {Dial: "b:80", Weight: 1}})
	pool.Attach(r, snapshot)
	sw.Select(upstreamsNamed("a", "b"), r, nil)
	fromSnapshot := sw.schedules.last.Load()
	if fromSnapshot == first || fromSnapshot.version != snapshot.Version {
		t.Error("a consul snapshot was not built for")
	}
	sw.Select(upstreamsNamed("a", "b"), r, nil)
	if sw.schedules.last.Load() != fromSnapshot {
		t.Error("the same snapshot version was built again")
	}
}

func TestConsistentHashSelect(t *testing.T) {
	upstreams := upstreamsNamed("a", "b", "c", "d")
	ch := provisioned(t, &ConsistentHash{Key: "{http.request.header.X-User}", FallbackRaw: []byte(`{"policy": "first"}`)})

	byUser := map[string]string{}
	for i := range 100 {
		r := caddyRequest("")
		r.Header.Set("X-User", fmt.Sprintf("user-%d", i))
		chosen := ch.Select(upstreams, r, nil).Dial
		if again := ch.Select(upstreams, r, nil).Dial; again != chosen {
			t.Fatalf("user-%d went to %s, then %s", i, chosen, again)
		}
		byUser[chosen] = r.Header.Get("X-User")
	}
	if len(byUser) != 4 {
		t.Errorf("100 users reached %d of 4 upstreams", len(byUser))
	}
	if got := ch.Select(upstreams, caddyRequest(""), nil).Dial; got != "a:80" {
		t.Errorf("a request without the key went to %s, want the fallback's (first) a:80", got)
	}
}

func TestConsistentHashDefaultKeyIsClientIP(t *testing.T) {
	ch := provisioned(t, &ConsistentHash{})
	upstreams := upstreamsNamed("a", "b", "c", "d", "e")
	seen := map[string]bool{}
	for i := range 50 {
		ip := fmt.Sprintf("198.51.100.%d", i)
		first := ch.Select(upstreams, caddyRequest(ip), nil)
		if ch.Select(upstreams, caddyRequest(ip), nil) != first {
			t.Fatalf("client %s moved", ip)
		}
		seen[first.Dial] = true
	}
	if len(seen) < 4 {
		t.Errorf("50 clients reached only %d of 5 upstreams", len(seen))
	}
}

func TestSelectDoesNotAllocate(t *testing.T) {
	upstreams := upstreamsNamed("a", "b", "c", "d")
	r := caddyRequest("203.0.113.7")
	r.Header.Set("X-User", "alice")
	policies := map[string]reverseproxy.Selector{
		"smooth_weighted":              &SmoothWeighted{},
		"consistent_hash client ip":    provisioned(t, &ConsistentHash{}),
		"consistent_hash header":       provisioned(t, &ConsistentHash{Key: "{http.request.header.X-User}"}),
		"consistent_hash bounded load": provisioned(t, &ConsistentHash{BoundedLoad: 1.25}),
		"least_latency":                newTestLeastLatency(t),
	}
	for name, policy := range policies {
		policy.Select(upstreams, r, nil) // builds
		if allocs := testing.AllocsPerRun(1000, func() { policy.Select(upstreams, r, nil) }); allocs != 0 {
			t.Errorf("%s allocates %v times per selection, want 0", name, allocs)
		}
	}
}

func TestValidateNamesFieldAndValue(t *testing.T) {
	tests := []struct {
		name   string
		policy caddy.Validator
		want   string
	}{
		{"negative weight", &SmoothWeighted{Weights: Weights{"a:80": -1}}, `weight of "a:80": -1 must be from 0 to 1000`},
		{"weight too large", &ConsistentHash{Weights: Weights{"a:80": 1001}}, `weight of "a:80": 1001`},
		{"negative points", &ConsistentHash{Points: -4}, "points -4"},
		{"too many points", &ConsistentHash{Points: 1 << 17}, "points 131072"},
		{"bounded load below 1", &ConsistentHash{BoundedLoad: 0.5}, "bounded_load 0.5: must be at least 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.policy.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

// provisioned provisions ch outside any config.
func provisioned(t testing.TB, ch *ConsistentHash) *ConsistentHash {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := ch.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if err := ch.Validate(); err != nil {
		t.Fatal(err)
	}
	return ch
}
