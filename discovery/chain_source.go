package discovery

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddymesh/caddymesh/internal/pool"
	"github.com/caddymesh/caddymesh/internal/urlpath"
)

// chainLegVar is the request variable holding the leg of the chain an
// attempt chose, so that the retries of a request keep its route and split
// (as Envoy's do) and its actions are done once.
const chainLegVar = "mesh.chain_leg"

// chainSource is what a source with chain follows: the shared chain watch
// of its service.
type chainSource struct {
	key     chainKey
	watch   *chainWatch
	slashes urlpath.EscapedSlashes // how paths are normalized before matching
}

// provisionChain takes the shared chain watch of the source's service,
// compiled for its first datacenter.
func (cu *ConsulUpstreams) provisionChain(ctx caddy.Context) error {
	slashes, err := appEscapedSlashes(ctx)
	if err != nil {
		return err
	}
	key := chainKey{endpoint: cu.conn.endpoint, service: cu.Service, datacenter: cu.datacenters[0],
		targets: targetSettings{
			filter: cu.filter, health: cu.Health, near: cu.Near, consistency: cu.Consistency,
			wait: time.Duration(cu.Wait), holdLast: time.Duration(*cu.HoldLast), panicThreshold: cu.PanicThreshold,
		}}
	cw, err := takeChainWatch(ctx, key, cu.conn, cu.logger)
	if err != nil {
		return err
	}
	cu.chain = &chainSource{key: key, watch: cw, slashes: slashes}
	return nil
}

// release lets go of the chain watch.
func (cs *chainSource) release() error {
	return releaseChainWatch(cs.key)
}

// upstreams evaluates the chain on r and returns the instances of the
// target chosen, without I/O or locks: the router's routes in order, the
// splitter's weighted choice, the resolver's target or, when it has no
// healthy instance, its failover targets in order. On the first attempt of
// a request it does the route's and split's actions on r; a retry keeps the
// route and split of the first attempt, and picks the target anew.
func (cs *chainSource) upstreams(r *http.Request, p pool.Preselector) ([]*reverseproxy.Upstream, error) {
	ev := cs.watch.current.Load()
	if ev == nil {
		pool.Attach(r, nil)
		return nil, fmt.Errorf("consul has not answered yet with the discovery chain of %q", cs.key.service)
	}
	target := ev.direct
	var snap *pool.Snapshot
	if target != nil {
		snap = target.pool.choose()
	} else {
		leg := cs.leg(r, ev)
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
	return handOut(r, snap, p), nil
}

// leg returns the leg of the chain for r: the one an earlier attempt of r
// chose, else the leg of the first route r matches, whose actions it does
// on r; nil when r's path cannot be normalized or no route matches.
func (cs *chainSource) leg(r *http.Request, ev *evaluator) *chainLeg {
	if leg, ok := caddyhttp.GetVar(r.Context(), chainLegVar).(*chainLeg); ok {
		return leg
	}
	path, _, err := urlpath.Normalize(r.URL.EscapedPath(), cs.slashes)
	if err != nil {
		return nil
	}
	route := ev.route(r, path)
	if route == nil {
		return nil
	}
	leg := route.pick(rand.Uint32N(max(route.total, 1)))
	caddyhttp.SetVar(r.Context(), chainLegVar, leg)
	if err := leg.applyTo(r, path); err != nil {
		return nil
	}
	return leg
}
