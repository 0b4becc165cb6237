package discovery

import (
	"fmt"
	"math/rand/v2"
	"net/http"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

	"github.com/caddymesh/caddymesh/internal/pool"
	"github.com/caddymesh/caddymesh/internal/urlpath"
)

// chainLegVar is the request variable holding the leg of the chain an
// attempt chose, so that the retries of a request keep its route and split
// (as Envoy's do) and its actions are done once.
const chainLegVar = "mesh.chain_leg"

// upstreams evaluates the chain on r and returns the instances of the
// target chosen, without I/O or locks: the router's routes in order, the
// splitter's weighted choice, the resolver's target or, when it has no
// healthy instance, its failover targets in order. On the first attempt of
// a request it does the route's and split's actions on r; a retry keeps the
// route and split of the first attempt, and picks the target anew.
func (f *chainFollower) upstreams(r *http.Request, handout *pool.Handout) ([]*reverseproxy.Upstream, error) {
	ev := f.current.Load()
	if ev == nil {
		pool.Attach(r, nil)
		return nil, fmt.Errorf("consul has not answered yet with the discovery chain of %q", f.key.Service)
	}
	target := ev.direct
	var snap *pool.Snapshot
	if target != nil {
		snap = target.pool.choose()
	} else {
		leg := f.leg(r, ev)
		if leg == nil {
			pool.Attach(r, nil)
			return nil, nil // no route for r: no upstreams
		}
		target, snap = leg.resolver.choose()
	}
	if snap == nil {
		pool.Attach(r, nil)
		return nil, fmt.Errorf("consul has not answered yet for chain target %q", target.id)
	}
	if target.requests != nil {
		target.requests.Inc()
	}
	return handout.Upstreams(r, snap), nil
}

// leg returns the leg of the chain for r: the one an earlier attempt of r
// through this source chose, else the leg of the first route r matches,
// whose actions it does on r; nil when r's path cannot be normalized or no
// route matches. A leg another source chose (a second chain reverse_proxy
// of the same request, in handle_errors say) is not this source's.
func (f *chainFollower) leg(r *http.Request, ev *evaluator) *chainLeg {
	if leg, ok := caddyhttp.GetVar(r.Context(), chainLegVar).(*chainLeg); ok && leg.route.ev.owner == f {
		return leg
	}
	path, _, err := urlpath.Normalize(r.URL.EscapedPath(), f.slashes)
	if err != nil {
		return nil
	}
	route := ev.route(r, path)
	if route == nil {
		return nil
	}
	leg := route.pick(rand.Uint32N(max(route.total, 1)))
	if err := leg.applyTo(r, path); err != nil {
		return nil // a PrefixRewrite that makes a bad path: no upstreams
	}
	caddyhttp.SetVar(r.Context(), chainLegVar, leg)
	if leg.respondsWithHeaders && caddyhttp.GetVar(r.Context(), chainHeadersVar) == nil {
		f.noteResponseHeadersDropped()
	}
	return leg
}

// noteResponseHeadersDropped records, and logs once, that response header
// actions were chosen for a request that mesh_chain does not wrap.
func (f *chainFollower) noteResponseHeadersDropped() {
	if !f.responseHeadersDropped.Load() && f.responseHeadersDropped.CompareAndSwap(false, true) {
		f.logger.Warn("discovery chain: not honoured by caddymesh", zap.String("service", f.key.Service),
			zap.String("what", responseHeadersWithoutHandler))
	}
}
