package pool_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddymesh/caddymesh/internal/pool"
)

// firstTwo is a selection policy that names the first two instances.
type firstTwo struct{}

func (firstTwo) Preselect(_ *pool.Snapshot, _ *http.Request, candidates []int) []int {
	return append(candidates, 0, 1)
}

func (firstTwo) Select(upstreams reverseproxy.UpstreamPool, _ *http.Request, _ http.ResponseWriter) *reverseproxy.Upstream {
	return upstreams[0]
}

func snapshotOf(n int) *pool.Snapshot {
	instances := make([]pool.Instance, n)
	for i := range instances {
		instances[i] = pool.Instance{Dial: fmt.Sprintf("10.0.0.%d:80", i), Weight: 1}
	}
	return pool.NewSnapshot(instances)
}

func newRequest() *http.Request {
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	return r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{}))
}

// The handout finds the proxy's policy when the first request comes: the
// proxy's fields may be provisioned in any order after the source's.
func TestHandoutFindsThePolicyAtTheFirstAttempt(t *testing.T) {
	proxy := &reverseproxy.Handler{}
	handout := pool.NewHandout(proxy, zap.NewNop())
	proxy.LoadBalancing = &reverseproxy.LoadBalancing{SelectionPolicy: firstTwo{}} // provisioned after the source
	snap := snapshotOf(pool.PreselectAbove + 1)
	r := newRequest()
	if got := handout.Upstreams(r, snap); len(got) != 2 || got[1].Dial != snap.Instances[1].Dial {
		t.Fatalf("%d upstreams, want the 2 candidates", len(got))
	}
	p := pool.PreselectionOf(r)
	if p == nil || p.By != (firstTwo{}) || p.Snapshot != snap || len(p.Candidates) != 2 {
		t.Fatalf("preselection %+v, want 2 candidates by the policy from the snapshot", p)
	}
	handout.Retry(r)
	if got := handout.Upstreams(r, snap); len(got) != len(snap.Instances) || pool.FromRequest(r) != snap {
		t.Errorf("a retry got %d upstreams, want the whole pool of %d and its snapshot", len(got), len(snap.Instances))
	}
	if got := handout.Upstreams(r, snap); len(got) != 2 {
		t.Errorf("the attempt after a retry's got %d upstreams, want the 2 candidates", len(got))
	}
	if got := handout.Upstreams(r, snapshotOf(pool.PreselectAbove)); len(got) != pool.PreselectAbove {
		t.Errorf("a pool of %d gave %d upstreams, want all", pool.PreselectAbove, len(got))
	}
}

// A large pool whose policy cannot preselect goes whole to Caddy, which is
// logged once.
func TestHandoutLogsOnceThatThePolicyCannotPreselect(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	proxy := &reverseproxy.Handler{LoadBalancing: &reverseproxy.LoadBalancing{SelectionPolicy: &reverseproxy.RoundRobinSelection{}}}
	handout := pool.NewHandout(proxy, zap.New(core))
	snap := snapshotOf(40)
	for range 3 {
		if got := handout.Upstreams(newRequest(), snap); len(got) != 40 {
			t.Fatalf("%d upstreams, want the whole pool of 40", len(got))
		}
	}
	if got := logs.Len(); got != 1 {
		t.Errorf("logged %d times, want once", got)
	}
	for _, h := range []*pool.Handout{nil, pool.NewHandout(nil, nil)} {
		if got := h.Upstreams(newRequest(), snap); len(got) != 40 {
			t.Errorf("with no proxy, %d upstreams, want the whole pool of 40", len(got))
		}
	}
}
