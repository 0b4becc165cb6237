package discovery

import (
	"cmp"
	"maps"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddymesh/caddymesh/internal/consul"
	"github.com/caddymesh/caddymesh/internal/pool"
	"github.com/caddymesh/caddymesh/internal/urlpath"
)

// splitScale turns a split's weight, in percent, into hundredths of a
// percent: the smallest weight Consul represents.
const splitScale = 100

// evaluator is a compiled discovery chain as requests evaluate it,
// immutable: built once per version of the chain, read by any number of
// requests at once without locks or allocations.
type evaluator struct {
	// routes are the router's routes in order, the last matching every
	// request; a chain without a router has one route that matches all.
	routes []chainRoute
	// direct is the one target of a chain with nothing to evaluate (a
	// service without config entries): requests go to it straight.
	direct *chainTarget
	// targets are every target of the chain, by ID.
	targets []*chainTarget
	// notHonoured says what of the chain Caddy cannot honour per request.
	notHonoured []string
	// owner is the source that follows the chain: a leg an earlier
	// attempt chose is this source's only when its evaluator's owner is.
	owner *chainFollower
}

// chainRoute is a route of the chain: what it matches, its legs (one, or
// a splitter's), and its actions on the request.
type chainRoute struct {
	ev            *evaluator
	def           *api.ServiceRoute // nil for a chain without a router
	match         routeMatch
	legs          []chainLeg
	total         uint32 // the sum of the legs' weights
	prefixRewrite string
	request       headerOps
	response      headerOps
}

// chainLeg is where a route sends a share of its requests: a resolver,
// with the split's own header actions.
type chainLeg struct {
	route    *chainRoute
	resolver *chainResolver
	weight   uint32 // in hundredths of a percent
	request  headerOps
	response headerOps
	// respondsWithHeaders is set when the leg or its route has response
	// header actions, which only mesh_chain does.
	respondsWithHeaders bool
}

// chainResolver is a resolver node: its target, then its failover targets.
type chainResolver struct {
	name    string
	targets []*chainTarget
}

// chainTarget is a target of the chain with its pool of instances.
type chainTarget struct {
	id       string
	def      *consul.ChainTarget
	pool     targetPool
	requests prometheus.Counter // nil in tests
}

// finish links the compiled routes and legs, and finds a direct target.
func (ev *evaluator) finish(c *chainCompiler) {
	for i := range ev.routes {
		route := &ev.routes[i]
		route.ev = ev
		for j := range route.legs {
			leg := &route.legs[j]
			leg.route = route
			leg.respondsWithHeaders = !leg.response.empty() || !route.response.empty()
			route.total += leg.weight
		}
	}
	ev.targets = slices.SortedFunc(maps.Values(c.targets), func(a, b *chainTarget) int { return cmp.Compare(a.id, b.id) })
	slices.Sort(c.notHonoured)
	ev.notHonoured = slices.Compact(c.notHonoured)
	if len(ev.routes) != 1 {
		return
	}
	route := &ev.routes[0]
	if len(route.legs) == 1 && len(route.legs[0].resolver.targets) == 1 && route.match.all() &&
		route.prefixRewrite == "" && route.request.empty() && route.legs[0].request.empty() {
		ev.direct = route.legs[0].resolver.targets[0]
	}
}

// route returns the first route that r, whose normalized escaped path is
// path, matches; nil when none does.
func (ev *evaluator) route(r *http.Request, path string) *chainRoute {
	for i := range ev.routes {
		if ev.routes[i].match.matches(r, path) {
			return &ev.routes[i]
		}
	}
	return nil
}

// pick returns the leg for roll, a number below the route's total weight:
// each leg has a share of the rolls equal to its weight.
func (route *chainRoute) pick(roll uint32) *chainLeg {
	for i := range route.legs {
		if roll < route.legs[i].weight {
			return &route.legs[i]
		}
		roll -= route.legs[i].weight
	}
	return &route.legs[len(route.legs)-1]
}

// choose returns the first of the resolver's targets with a healthy
// instance, and its instances; when none has one, the first target that
// Consul answered for, with none. The snapshot is nil when no target's
// watch has answered yet.
func (res *chainResolver) choose() (*chainTarget, *pool.Snapshot) {
	var first *chainTarget
	var firstSnap *pool.Snapshot
	for _, t := range res.targets {
		snap := t.pool.choose()
		if snap == nil {
			continue
		}
		if len(snap.Instances) > 0 {
			return t, snap
		}
		if first == nil {
			first, firstSnap = t, snap
		}
	}
	if first == nil {
		return res.targets[0], nil
	}
	return first, firstSnap
}

// applyTo does the leg's actions on r, the copy of the request that
// reverse_proxy sends upstream, whose normalized escaped path is path:
// the split's header actions, then the route's (which win), then the
// route's PrefixRewrite. The upstream receives the normalized path, the
// one the route was chosen on, rewritten or not.
func (leg *chainLeg) applyTo(r *http.Request, path string) error {
	leg.request.applyTo(r)
	leg.route.request.applyTo(r)
	if leg.route.prefixRewrite != "" {
		path = leg.route.rewrite(path)
	} else if path == r.URL.EscapedPath() {
		return nil
	}
	return urlpath.SetPath(r, path)
}

// rewrite returns path with the route's PrefixRewrite done, as Consul's
// Envoy integration does it: the matched prefix (the whole path for an
// exact or regex match) is replaced; a PrefixRewrite of "/" also takes the
// slash after the prefix, so that /admin/x and /admin both become /x and /.
func (route *chainRoute) rewrite(path string) string {
	m := &route.match
	matched := len(path)
	if m.regex == nil && m.exact == "" {
		matched = len(m.prefix)
	}
	if route.prefixRewrite == "/" {
		if m.regex != nil || m.exact != "" {
			matched = 0 // Consul's regex for "/" only strips a prefix match
		}
		return "/" + strings.TrimPrefix(path[matched:], "/")
	}
	return route.prefixRewrite + path[matched:]
}

// routeMatch is what a route matches: a path rule, header rules, query
// parameter rules and methods, all of which must match.
type routeMatch struct {
	exact           string
	prefix          string
	regex           *regexp.Regexp
	caseInsensitive bool
	headers         []routeHeaderMatch
	query           []queryMatch
	methods         []string
}

// all reports whether m matches every request.
func (m *routeMatch) all() bool {
	return m.prefix == "/" && m.exact == "" && m.regex == nil &&
		len(m.headers) == 0 && len(m.query) == 0 && len(m.methods) == 0
}

func (m *routeMatch) matches(r *http.Request, path string) bool {
	if !m.matchesPath(path) {
		return false
	}
	if len(m.methods) > 0 && !slices.Contains(m.methods, r.Method) {
		return false
	}
	for i := range m.headers {
		if !m.headers[i].matches(r) {
			return false
		}
	}
	for i := range m.query {
		if !m.query[i].matches(r.URL.RawQuery) {
			return false
		}
	}
	return true
}

func (m *routeMatch) matchesPath(path string) bool {
	switch {
	case m.regex != nil:
		return m.regex.MatchString(path)
	case m.exact != "":
		if m.caseInsensitive {
			return strings.EqualFold(path, m.exact)
		}
		return path == m.exact
	case m.caseInsensitive:
		return len(path) >= len(m.prefix) && strings.EqualFold(path[:len(m.prefix)], m.prefix)
	default:
		return strings.HasPrefix(path, m.prefix)
	}
}

// Kinds of value match.
const (
	matchPresent = iota
	matchExact
	matchPrefix
	matchSuffix
	matchRegex
)

// valueMatch matches a header's or query parameter's value.
type valueMatch struct {
	kind  int
	value string
	regex *regexp.Regexp
}

func (v *valueMatch) matches(s string) bool {
	switch v.kind {
	case matchExact:
		return s == v.value
	case matchPrefix:
		return strings.HasPrefix(s, v.value)
	case matchSuffix:
		return strings.HasSuffix(s, v.value)
	case matchRegex:
		return v.regex.MatchString(s)
	default:
		return true
	}
}

// routeHeaderMatch is a header rule. As in Envoy, a header given several times
// is matched on its values joined by commas, and a missing header matches
// only an inverted presence rule.
type routeHeaderMatch struct {
	name   string // canonical
	host   bool   // the rule is on Host (or :authority), which Go keeps in r.Host
	invert bool
	value  valueMatch
}

func (h *routeHeaderMatch) matches(r *http.Request) bool {
	value, present := h.lookup(r)
	if !present {
		return h.invert && h.value.kind == matchPresent
	}
	return h.value.matches(value) != h.invert
}

func (h *routeHeaderMatch) lookup(r *http.Request) (string, bool) {
	if h.host {
		return r.Host, r.Host != ""
	}
	switch values := r.Header[h.name]; len(values) {
	case 0:
		return "", false
	case 1:
		return values[0], true
	default:
		return strings.Join(values, ","), true
	}
}

// queryMatch is a query parameter rule, on the parameter's first value.
type queryMatch struct {
	name  string
	value valueMatch
}

func (q *queryMatch) matches(rawQuery string) bool {
	value, present := firstQueryValue(rawQuery, q.name)
	return present && q.value.matches(value)
}

// firstQueryValue returns the unescaped first value of the parameter name
// in rawQuery, without allocating unless a key or the value is escaped.
func firstQueryValue(rawQuery, name string) (string, bool) {
	for rawQuery != "" {
		var pair string
		pair, rawQuery, _ = strings.Cut(rawQuery, "&")
		key, value, _ := strings.Cut(pair, "=")
		if key != name {
			if !strings.ContainsAny(key, "%+") {
				continue
			}
			if unescaped, err := url.QueryUnescape(key); err != nil || unescaped != name {
				continue
			}
		}
		unescaped, err := url.QueryUnescape(value)
		if err != nil {
			return value, true
		}
		return unescaped, true
	}
	return "", false
}

// headerOps are the header actions of a route or split, with canonical
// names, in a fixed order.
type headerOps struct {
	remove []string
	add    []headerValue
	set    []headerValue
}

// headerValue is a header's name and value.
type headerValue struct{ name, value string }

func (ops *headerOps) empty() bool {
	return len(ops.remove) == 0 && len(ops.add) == 0 && len(ops.set) == 0
}

func (ops *headerOps) sort() {
	slices.Sort(ops.remove)
	byName := func(a, b headerValue) int { return cmp.Compare(a.name, b.name) }
	slices.SortFunc(ops.add, byName)
	slices.SortFunc(ops.set, byName)
}

// applyTo does the actions on r's headers in Envoy's order: removals,
// then additions, then replacements. Host is r.Host.
func (ops *headerOps) applyTo(r *http.Request) {
	ops.applyToHeader(r.Header, func(host string) { r.Host = host })
}

// applyToHeader does the actions on header, calling setHost for a Host
// set, if it is not nil.
func (ops *headerOps) applyToHeader(header http.Header, setHost func(string)) {
	for _, name := range ops.remove {
		header.Del(name)
	}
	for _, h := range ops.add {
		header.Add(h.name, h.value)
	}
	for _, h := range ops.set {
		if h.name == "Host" && setHost != nil {
			setHost(h.value)
			continue
		}
		header.Set(h.name, h.value)
	}
}
