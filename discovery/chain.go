package discovery

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/http/httpguts"

	"github.com/caddymesh/caddymesh/internal/consul"
	"github.com/caddymesh/caddymesh/internal/pool"
)

// targetPool gives the current instances of a chain target: the shared
// health watch of its service, subset and datacenter.
type targetPool interface {
	choose() *pool.Snapshot
}

// poolFor returns the pool of a target, taking its health watch.
type poolFor func(target *consul.ChainTarget) (targetPool, error)

// chainCompiler turns a compiled chain into the immutable structure that
// requests evaluate (an evaluator), once per version of the chain.
type chainCompiler struct {
	chain       *consul.CompiledChain
	poolFor     poolFor
	counters    *prometheus.CounterVec // requests by target; nil in tests
	targets     map[string]*chainTarget
	resolvers   map[string]*chainResolver
	notHonoured []string
}

// compileChain compiles chain for requests, taking each target's pool
// from poolFor.
func compileChain(chain *consul.CompiledChain, poolFor poolFor, counters *prometheus.CounterVec) (*evaluator, error) {
	if chain == nil {
		return nil, errors.New("consul answered no discovery chain")
	}
	c := &chainCompiler{chain: chain, poolFor: poolFor, counters: counters,
		targets: map[string]*chainTarget{}, resolvers: map[string]*chainResolver{}}
	start, ok := c.node(chain.StartNode)
	if !ok {
		return nil, fmt.Errorf("discovery chain of %q: start node %q is missing", chain.ServiceName, chain.StartNode)
	}
	ev := &evaluator{}
	var err error
	switch start.Type {
	case api.DiscoveryGraphNodeTypeRouter:
		ev.routes, err = c.routes(start)
	default:
		route := chainRoute{match: routeMatch{prefix: "/"}}
		if route.legs, err = c.legs(start); err == nil {
			ev.routes = []chainRoute{route}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("discovery chain of %q: %w", chain.ServiceName, err)
	}
	ev.finish(c)
	return ev, nil
}

// node returns the chain's node name; ok is false when the chain has none
// of that name, or an empty one.
func (c *chainCompiler) node(name string) (node *consul.ChainNode, ok bool) {
	node = c.chain.Nodes[name]
	return node, node != nil
}

// routes compiles the routes of a router node, in order.
func (c *chainCompiler) routes(router *consul.ChainNode) ([]chainRoute, error) {
	routes := make([]chainRoute, len(router.Routes))
	for i, def := range router.Routes {
		if def == nil || def.Definition == nil {
			return nil, fmt.Errorf("route %d has no definition", i)
		}
		route := &routes[i]
		route.def = def.Definition
		var err error
		if route.match, err = compileMatch(def.Definition.Match); err != nil {
			return nil, fmt.Errorf("route %d: %w", i, err)
		}
		c.destination(route, i, def.Definition.Destination)
		next, ok := c.node(def.NextNode)
		if !ok {
			return nil, fmt.Errorf("route %d: node %q is missing", i, def.NextNode)
		}
		if route.legs, err = c.legs(next); err != nil {
			return nil, fmt.Errorf("route %d: %w", i, err)
		}
	}
	return routes, nil
}

// destination compiles the actions of route i's destination, and notes
// those Caddy cannot honour per route.
func (c *chainCompiler) destination(route *chainRoute, i int, dest *api.ServiceRouteDestination) {
	if dest == nil {
		return
	}
	route.prefixRewrite = dest.PrefixRewrite
	route.request = compileHeaderOps(dest.RequestHeaders)
	route.response = compileHeaderOps(dest.ResponseHeaders)
	where := fmt.Sprintf("route %d: ", i)
	c.noteIf(dest.RequestTimeout != 0, where+"RequestTimeout (reverse_proxy's transport timeouts are per handler)")
	c.noteIf(dest.IdleTimeout != 0, where+"IdleTimeout (reverse_proxy's transport timeouts are per handler)")
	c.noteIf(dest.NumRetries != 0 || dest.RetryOnConnectFailure || len(dest.RetryOn) > 0 || len(dest.RetryOnStatusCodes) > 0,
		where+"NumRetries, RetryOn, RetryOnConnectFailure, RetryOnStatusCodes (reverse_proxy's retries are per handler: lb_retries, lb_try_duration, lb_retry_match)")
	c.noteHeaderActions(where, dest.RequestHeaders, dest.ResponseHeaders)
}

// legs compiles the node a route leads to: a splitter's legs, or the one
// leg of a resolver.
func (c *chainCompiler) legs(node *consul.ChainNode) ([]chainLeg, error) {
	c.noteLoadBalancer(node)
	switch node.Type {
	case api.DiscoveryGraphNodeTypeResolver:
		res, err := c.resolver(node)
		if err != nil {
			return nil, err
		}
		return []chainLeg{{resolver: res, weight: splitScale * 100}}, nil
	case api.DiscoveryGraphNodeTypeSplitter:
		return c.splits(node)
	default:
		return nil, fmt.Errorf("node %q has unexpected type %q", node.Name, node.Type)
	}
}

// splits compiles a splitter's legs. Weights are kept in hundredths of a
// percent, as Consul's own Envoy integration scales them.
func (c *chainCompiler) splits(splitter *consul.ChainNode) ([]chainLeg, error) {
	legs := make([]chainLeg, 0, len(splitter.Splits))
	for i, split := range splitter.Splits {
		if split == nil {
			return nil, fmt.Errorf("split %d of %q is empty", i, splitter.Name)
		}
		next, ok := c.node(split.NextNode)
		if !ok || next.Type != api.DiscoveryGraphNodeTypeResolver {
			return nil, fmt.Errorf("split %d of %q: node %q is not a resolver", i, splitter.Name, split.NextNode)
		}
		c.noteLoadBalancer(next)
		res, err := c.resolver(next)
		if err != nil {
			return nil, err
		}
		leg := chainLeg{resolver: res, weight: uint32(split.Weight * splitScale)}
		if def := split.Definition; def != nil {
			leg.request = compileHeaderOps(def.RequestHeaders)
			leg.response = compileHeaderOps(def.ResponseHeaders)
			c.noteHeaderActions(fmt.Sprintf("split %d of %q: ", i, splitter.Name), def.RequestHeaders, def.ResponseHeaders)
		}
		legs = append(legs, leg)
	}
	if len(legs) == 0 {
		return nil, fmt.Errorf("splitter %q has no splits", splitter.Name)
	}
	return legs, nil
}

// resolver compiles a resolver node: its target, then its failover
// targets in order. Resolvers are shared by the routes and legs that lead
// to them.
func (c *chainCompiler) resolver(node *consul.ChainNode) (*chainResolver, error) {
	if res, ok := c.resolvers[node.Name]; ok {
		return res, nil
	}
	if node.Resolver == nil {
		return nil, fmt.Errorf("resolver node %q has no resolver", node.Name)
	}
	ids := []string{node.Resolver.Target}
	if fo := node.Resolver.Failover; fo != nil {
		ids = append(ids, fo.Targets...)
		c.noteIf(fo.Policy.Mode != "" || len(fo.Policy.Regions) > 0,
			fmt.Sprintf("resolver %q: Failover Policy (caddymesh fails over in the order of the targets)", node.Name))
	}
	c.noteIf(node.Resolver.RequestTimeout != 0,
		fmt.Sprintf("resolver %q: RequestTimeout (reverse_proxy's timeouts are per handler)", node.Name))
	res := &chainResolver{name: node.Name}
	for _, id := range ids {
		t, err := c.target(id)
		if err != nil {
			return nil, err
		}
		res.targets = append(res.targets, t)
	}
	c.resolvers[node.Name] = res
	return res, nil
}

// target returns the compiled target id, taking its pool the first time.
func (c *chainCompiler) target(id string) (*chainTarget, error) {
	if t, ok := c.targets[id]; ok {
		return t, nil
	}
	def := c.chain.Targets[id]
	if def == nil {
		return nil, fmt.Errorf("target %q is missing", id)
	}
	c.noteIf(def.Peer != "", fmt.Sprintf("target %q: Peer (cluster peering is not supported; the target gets no instances)", id))
	c.noteIf(def.External, fmt.Sprintf("target %q: External (terminating gateways are not supported; the target gets no instances)", id))
	c.noteIf(def.MeshGateway.Mode != "" && def.MeshGateway.Mode != api.MeshGatewayModeDefault && def.MeshGateway.Mode != api.MeshGatewayModeNone,
		fmt.Sprintf("target %q: MeshGateway mode %s (instances are dialled directly)", id, def.MeshGateway.Mode))
	p, err := c.poolFor(def)
	if err != nil {
		return nil, fmt.Errorf("target %q: %w", id, err)
	}
	t := &chainTarget{id: id, def: def, pool: p}
	if c.counters != nil {
		t.requests = c.counters.WithLabelValues(c.chain.ServiceName, id)
	}
	c.targets[id] = t
	return t, nil
}

// noteLoadBalancer notes a node's LoadBalancer: the selection policy is
// reverse_proxy's, per handler.
func (c *chainCompiler) noteLoadBalancer(node *consul.ChainNode) {
	c.noteIf(node.LoadBalancer != nil && node.LoadBalancer.Policy != "",
		fmt.Sprintf("node %q: LoadBalancer (the selection policy is reverse_proxy's lb_policy)", node.Name))
}

// noteHeaderActions notes header values with Envoy's %...% command
// operators, which Caddy sends as they are, and actions on headers that
// Caddy does not modify (see unmodifiable).
func (c *chainCompiler) noteHeaderActions(where string, mods ...*api.HTTPHeaderModifiers) {
	for _, m := range mods {
		if m == nil {
			continue
		}
		for _, values := range []map[string]string{m.Add, m.Set} {
			for name, v := range values {
				c.noteIf(strings.Count(v, "%") >= 2,
					fmt.Sprintf("%sheader %s: Envoy's %%...%% operators are sent as written", where, name))
				c.noteUnmodifiable(where, name)
			}
		}
		for _, name := range m.Remove {
			c.noteUnmodifiable(where, name)
		}
	}
}

func (c *chainCompiler) noteUnmodifiable(where, name string) {
	c.noteIf(unmodifiable(name), fmt.Sprintf("%sheader %q: a hop-by-hop or framing header, or no header name: not modified", where, name))
}

// framingHeaders are the headers that say how a message is carried, not
// what it says: reverse_proxy's hop-by-hop headers, which it removes from
// the request before the chain's actions, and Content-Length.
var framingHeaders = []string{"Alt-Svc", "Connection", "Content-Length", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Proxy-Connection", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// unmodifiable reports whether a chain's header action on name is not
// done: name is a framing header (setting Connection or Upgrade could turn
// a request into a protocol switch the client never asked for, a wrong
// Content-Length breaks the response), a pseudo-header such as :authority,
// or no valid header name.
func unmodifiable(name string) bool {
	return !httpguts.ValidHeaderFieldName(name) || slices.Contains(framingHeaders, http.CanonicalHeaderKey(name))
}

func (c *chainCompiler) noteIf(cond bool, what string) {
	if cond {
		c.notHonoured = append(c.notHonoured, what)
	}
}

// compileMatch compiles a route's match; nil matches every request.
func compileMatch(m *api.ServiceRouteMatch) (routeMatch, error) {
	var rm routeMatch
	if m == nil || m.HTTP == nil {
		rm.prefix = "/"
		return rm, nil
	}
	h := m.HTTP
	rm.caseInsensitive = h.CaseInsensitive
	var err error
	switch {
	case h.PathExact != "":
		rm.exact = h.PathExact
	case h.PathPrefix != "":
		rm.prefix = h.PathPrefix
	case h.PathRegex != "":
		flags := ""
		if h.CaseInsensitive {
			flags = "(?i)"
		}
		if rm.regex, err = anchored(flags + h.PathRegex); err != nil {
			return rm, fmt.Errorf("PathRegex %q: %w", h.PathRegex, err)
		}
	default:
		rm.prefix = "/"
	}
	for _, hdr := range h.Header {
		hm, ok, err := compileHeaderMatch(hdr)
		if err != nil {
			return rm, err
		}
		if ok {
			rm.headers = append(rm.headers, hm)
		}
	}
	for _, q := range h.QueryParam {
		qm, ok, err := compileQueryMatch(q)
		if err != nil {
			return rm, err
		}
		if ok {
			rm.query = append(rm.query, qm)
		}
	}
	rm.methods = h.Methods
	return rm, nil
}

// compileHeaderMatch compiles a header rule; ok is false for a rule with
// nothing to match, which Consul's Envoy integration skips too.
func compileHeaderMatch(h api.ServiceRouteHTTPMatchHeader) (routeHeaderMatch, bool, error) {
	hm := routeHeaderMatch{name: http.CanonicalHeaderKey(h.Name), invert: h.Invert}
	hm.host = hm.name == "Host" || h.Name == ":authority"
	var ok bool
	var err error
	if hm.value, ok, err = compileValueMatch(h.Exact, h.Regex, h.Prefix, h.Suffix, h.Present); err != nil {
		return hm, false, fmt.Errorf("header %s: %w", h.Name, err)
	}
	return hm, ok, nil
}

// compileQueryMatch compiles a query parameter rule; ok is false for a rule
// with nothing to match.
func compileQueryMatch(q api.ServiceRouteHTTPMatchQueryParam) (queryMatch, bool, error) {
	qm := queryMatch{name: q.Name}
	var ok bool
	var err error
	if qm.value, ok, err = compileValueMatch(q.Exact, q.Regex, "", "", q.Present); err != nil {
		return qm, false, fmt.Errorf("query parameter %s: %w", q.Name, err)
	}
	return qm, ok, nil
}

// compileValueMatch compiles the first rule set, in Consul's Envoy
// integration's order: exact, regex, prefix, suffix, presence; ok is false
// when none is.
func compileValueMatch(exact, regex, prefix, suffix string, present bool) (valueMatch, bool, error) {
	switch {
	case exact != "":
		return valueMatch{kind: matchExact, value: exact}, true, nil
	case regex != "":
		re, err := anchored(regex)
		if err != nil {
			return valueMatch{}, false, fmt.Errorf("Regex %q: %w", regex, err)
		}
		return valueMatch{kind: matchRegex, regex: re}, true, nil
	case prefix != "":
		return valueMatch{kind: matchPrefix, value: prefix}, true, nil
	case suffix != "":
		return valueMatch{kind: matchSuffix, value: suffix}, true, nil
	default:
		return valueMatch{kind: matchPresent}, present, nil
	}
}

// compileHeaderOps compiles header modifiers, with canonical names,
// without the actions on unmodifiable headers.
func compileHeaderOps(m *api.HTTPHeaderModifiers) headerOps {
	var ops headerOps
	if m == nil {
		return ops
	}
	for name, v := range m.Add {
		if !unmodifiable(name) {
			ops.add = append(ops.add, headerValue{http.CanonicalHeaderKey(name), v})
		}
	}
	for name, v := range m.Set {
		if !unmodifiable(name) {
			ops.set = append(ops.set, headerValue{http.CanonicalHeaderKey(name), v})
		}
	}
	for _, name := range m.Remove {
		if !unmodifiable(name) {
			ops.remove = append(ops.remove, http.CanonicalHeaderKey(name))
		}
	}
	ops.sort()
	return ops
}
