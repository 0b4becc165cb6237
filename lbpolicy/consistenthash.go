package lbpolicy

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/zeebo/xxh3"

	"github.com/caddymesh/caddymesh/internal/pool"
	"github.com/caddymesh/caddymesh/internal/reqkey"
	"github.com/caddymesh/caddymesh/internal/validate"
)

func init() {
	caddy.RegisterModule(new(ConsistentHash))
}

// ConsistentHash sends requests with the same key to the same upstream,
// through a weighted consistent-hash ring: each upstream's share of keys is
// proportional to its weight, and when an upstream leaves the pool only
// the keys it had move. Use it for caches and for sticky sessions.
//
// An unavailable upstream's keys go to the next available upstream on the
// ring, every other key staying where it is, and come back when it
// recovers. With bounded_load, no upstream takes more than its share of
// the requests in flight times the factor: an overloaded upstream passes
// the request to the next one on the ring, which tames hot keys.
//
// The ring is built once per pool of upstreams (per Consul snapshot, or
// static pool); a pick hashes the key and finds its place in O(1), with no
// lock and no allocation. A pool of more than 65,536 upstreams is left to
// the fallback policy. From a large pool of the consul source it names the
// key's upstream and the next few on the ring, so that Caddy need not
// prepare every one (see pool.Preselector).
type ConsistentHash struct {
	// The key to hash: any placeholder expression, such as
	// {http.request.header.X-User}, {http.request.cookie.session} or
	// {http.request.uri.path}. A request whose key is empty is sent by the
	// fallback policy. Default: {http.vars.client_ip}, the client's IP.
	Key string `json:"key,omitempty"`

	// Ring points per unit of weight. More points spread keys more evenly
	// at the cost of memory (4 bytes a point, plus an index). Default:
	// 1024, which keeps the busiest of 100 equal upstreams within 7% of the
	// mean; at most 65536.
	Points int `json:"points,omitempty"`

	// Bound on each upstream's requests in flight, as a factor of its share
	// of all requests in flight to the pool (the "balance factor" of HAProxy
	// and Envoy): with 1.25, no upstream takes more than 125% of its share;
	// a request whose upstream is full goes to the next one on the ring.
	// In-flight counts are those Caddy keeps per upstream address, as for
	// least_conn: selections made within the microseconds before Caddy
	// counts a request may each admit one more. At least 1; 0 turns it off.
	// Default: 0.
	BoundedLoad float64 `json:"bounded_load,omitempty"`

	// Weights of upstreams by dial address (host:port), from 0 to 1000.
	// They override Consul's weights. Default: Consul's weight, else 1.
	Weights Weights `json:"weights,omitempty"`

	// The policy that chooses when the key is empty. Default: random.
	FallbackRaw json.RawMessage `json:"fallback,omitempty" caddy:"namespace=http.reverse_proxy.selection_policies inline_key=policy"`

	fallback  reverseproxy.Selector
	key       reqkey.Func
	rings     builtFor[*hashRing]
	validated validate.Once // Validate's answer, for Caddy's call after Provision
}

// hashRing is a ring with what bounded loads need beside it.
type hashRing struct {
	*ring
	loads       *loadEstimate
	weights     []int
	totalWeight int
}

// maxPointsPerWeight bounds the points option.
const maxPointsPerWeight = 1 << 16

// CaddyModule returns the Caddy module information.
func (*ConsistentHash) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.selection_policies.consistent_hash",
		New: func() caddy.Module { return new(ConsistentHash) },
	}
}

// Provision validates, fills defaults, compiles the key and loads the fallback.
func (ch *ConsistentHash) Provision(ctx caddy.Context) error {
	if err := ch.Validate(); err != nil {
		return err
	}
	if ch.Key == "" {
		ch.Key = reqkey.ClientIP
	}
	if ch.Points == 0 {
		ch.Points = defaultPoints
	}
	ch.key = reqkey.Compile(ch.Key)
	if ch.FallbackRaw == nil {
		ch.FallbackRaw = caddyconfig.JSONModuleObject(reverseproxy.RandomSelection{}, "policy", "random", nil)
	}
	mod, err := ctx.LoadModule(ch, "FallbackRaw")
	if err != nil {
		return fmt.Errorf("consistent_hash: loading fallback policy: %v", err)
	}
	ch.fallback = mod.(reverseproxy.Selector)
	return nil
}

// Validate rejects bad values, naming the field and the value.
// Provision calls it before acting on them; its checks run once.
func (ch *ConsistentHash) Validate() error { return ch.validated.Do(ch.check) }

// check makes Validate's checks.
func (ch *ConsistentHash) check() error {
	switch {
	case ch.Points < 0 || ch.Points > maxPointsPerWeight:
		return fmt.Errorf("consistent_hash: points %d: must be from 1 to %d", ch.Points, maxPointsPerWeight)
	case ch.BoundedLoad != 0 && (ch.BoundedLoad < 1 || math.IsInf(ch.BoundedLoad, 1) || math.IsNaN(ch.BoundedLoad)):
		return fmt.Errorf("consistent_hash: bounded_load %v: must be at least 1, or 0 for no bound", ch.BoundedLoad)
	}
	return ch.Weights.validate()
}

// Select returns the upstream the request's key belongs to; see
// ConsistentHash. A nil ResponseWriter is fine.
func (ch *ConsistentHash) Select(upstreams reverseproxy.UpstreamPool, r *http.Request, w http.ResponseWriter) *reverseproxy.Upstream {
	if p := pool.PreselectionBy(r, ch, upstreams); p != nil {
		return ch.selectCandidate(upstreams, p)
	}
	key := ch.key(r)
	if key == "" || len(upstreams) > maxMembers {
		return ch.fallback.Select(upstreams, r, w)
	}
	hr := ch.rings.get(upstreams, r, ch.Weights, ch.build)
	hash := xxh3.HashString(key)
	var i int
	if ch.BoundedLoad == 0 {
		i = hr.pick(hash, func(i int) bool { return upstreams[i].Available() })
	} else {
		load := func(i int) int64 { return int64(upstreams[i].NumRequests()) }
		hr.loads.refreshNext(load)
		i = hr.pick(hash, func(i int) bool {
			return upstreams[i].Available() && hr.underBound(i, load(i), ch.BoundedLoad)
		})
	}
	if i < 0 {
		return nil
	}
	return upstreams[i]
}

// Preselect names the upstream the request's key belongs to and those
// after it clockwise on the ring, as many as pool.MaxCandidates: the
// upstreams Select would try, in order, if the first were unavailable or
// full. A request with an empty key gets none: the fallback policy chooses
// from the whole pool.
func (ch *ConsistentHash) Preselect(s *pool.Snapshot, r *http.Request, candidates []int) []int {
	key := ch.key(r)
	if key == "" || len(s.Instances) > maxMembers {
		return candidates
	}
	hr := ch.rings.forSnapshot(s, ch.Weights, ch.build)
	return hr.nearest(xxh3.HashString(key), candidates, pool.MaxCandidates)
}

// selectCandidate returns the first available of the candidates that
// Preselect named, and with bounded loads the first that is not full. When
// every available candidate is full, it returns the first of them: the
// bound is kept among the candidates, not the whole pool.
func (ch *ConsistentHash) selectCandidate(candidates []*reverseproxy.Upstream, p *pool.Preselection) *reverseproxy.Upstream {
	first := firstAvailable(candidates)
	if first < 0 {
		return nil
	}
	if ch.BoundedLoad == 0 {
		return candidates[first]
	}
	hr := ch.rings.forSnapshot(p.Snapshot, ch.Weights, ch.build)
	for i := first; i < len(candidates); i++ {
		u := candidates[i]
		if u.Available() && hr.underBound(p.Candidates[i], int64(u.NumRequests()), ch.BoundedLoad) {
			return u
		}
	}
	return candidates[first]
}

// build builds the ring of a pool.
func (ch *ConsistentHash) build(dials []string, weights []int) *hashRing {
	members := make([]ringMember, len(dials))
	total := 0
	for i, dial := range dials {
		members[i] = ringMember{id: dial, weight: weights[i]}
		total += weights[i]
	}
	return &hashRing{
		ring:        newRing(members, ch.Points),
		loads:       newLoadEstimate(make([]int64, len(dials))),
		weights:     weights,
		totalWeight: total,
	}
}

// underBound reports whether a member with load requests in flight may
// take one more under bounded loads, and records its load.
func (hr *hashRing) underBound(member int, load int64, factor float64) bool {
	hr.loads.observe(member, load)
	return load < hr.loads.capacity(factor, hr.weights[member], hr.totalWeight)
}

// Interface guards
var (
	_ caddy.Provisioner     = (*ConsistentHash)(nil)
	_ caddy.Validator       = (*ConsistentHash)(nil)
	_ reverseproxy.Selector = (*ConsistentHash)(nil)
	_ pool.Preselector      = (*ConsistentHash)(nil)
)
