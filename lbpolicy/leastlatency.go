package lbpolicy

import (
	"cmp"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddymesh/caddymesh/internal/bounds"
	"github.com/caddymesh/caddymesh/internal/pool"
	"github.com/caddymesh/caddymesh/internal/validate"
)

func init() {
	caddy.RegisterModule(new(LeastLatency))
}

// LeastLatency sends each request to the cheaper of two upstreams drawn at
// random (the power of two choices), an upstream's cost being its
// peak-EWMA round-trip time times its requests in flight plus one,
// divided by its weight: Finagle's and Linkerd's balancer. A slow upstream
// loses nearly every draw at once, and is tried again when its estimate
// has decayed.
//
// The estimate of an upstream jumps to any round trip slower than it and
// otherwise moves towards new ones with weight exp(-Δt/decay). A failed
// round trip (a connection error, a timeout, a 5xx or a 429, however fast)
// counts as 5 seconds; a Retry-After on a 429 or 503 holds that until the
// time it says. Weights are Consul's for upstreams of the consul source,
// else 1; weight 0 means never. Unavailable upstreams (Caddy's passive
// health checks, request limits) are skipped. From a large pool of the
// consul source it names a few instances drawn at random, so that Caddy
// need not prepare every one (see pool.Preselector).
//
// The policy measures round trips by wrapping the transport of its
// reverse_proxy, whichever it is (the round trip lasts until the response
// headers, as Caddy's upstream latency does); it must therefore be the
// selection policy of a reverse_proxy, or the fallback of one. Estimates
// are kept per upstream address, shared by the proxies of the same decay
// and default_rtt, and survive config reloads. A selection reads two
// estimates and takes no lock.
type LeastLatency struct {
	// How fast an estimate forgets: the time constant of its exponential
	// decay. A slow upstream that recovered gets traffic back after about
	// decay × ln(slow/fast round trip). From 100ms to 1h. Default: 10s.
	Decay caddy.Duration `json:"decay,omitempty"`

	// The estimate of an upstream with no measurement yet, decaying like
	// any other until its first round trip replaces it. From 1µs to 1m.
	// Default: 30ms.
	DefaultRTT caddy.Duration `json:"default_rtt,omitempty"`

	estimator peakEWMA
	table     *estimates
	pools     builtFor[*latencyPool]
	// ownTransport is the transport the policy gave its proxy, which had
	// none; nil when the proxy had its own.
	ownTransport *reverseproxy.HTTPTransport
	validated    validate.Once // Validate's answer, for Caddy's call after Provision
}

// Defaults and bounds of the options.
const (
	defaultDecay      = 10 * time.Second
	defaultDefaultRTT = 30 * time.Millisecond
	minDecay          = 100 * time.Millisecond
	maxDecay          = time.Hour
	minDefaultRTT     = time.Microsecond
	maxDefaultRTT     = time.Minute
)

// CaddyModule returns the Caddy module information.
func (*LeastLatency) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.selection_policies.least_latency",
		New: func() caddy.Module { return new(LeastLatency) },
	}
}

// Provision validates, fills defaults, takes the estimates of its configuration and
// wraps the transport of its reverse_proxy to measure round trips. Caddy
// loads a reverse_proxy's configured transport before its selection
// policy (TestLeastLatencyMeasuresEveryTransport pins it).
func (ll *LeastLatency) Provision(ctx caddy.Context) error {
	if err := ll.Validate(); err != nil {
		return err
	}
	proxy := pool.EnclosingProxy(ctx)
	if proxy == nil {
		return errors.New("least_latency: must be the selection policy of a reverse_proxy, whose round trips it measures")
	}
	ll.estimator = peakEWMA{
		decay:      float64(cmp.Or(time.Duration(ll.Decay), defaultDecay)),
		defaultRTT: cmp.Or(time.Duration(ll.DefaultRTT), defaultDefaultRTT),
	}
	table, err := takeEstimates(ll.estimator)
	if err != nil {
		return fmt.Errorf("least_latency: %v", err)
	}
	ll.table = table
	return ll.measure(ctx, proxy)
}

// Validate rejects options out of range, naming them.
// Provision calls it before acting on them; its checks run once.
func (ll *LeastLatency) Validate() error { return ll.validated.Do(ll.check) }

// check makes Validate's checks.
func (ll *LeastLatency) check() error {
	if err := cmp.Or(
		bounds.DurationOrZero("decay", ll.Decay, minDecay, maxDecay),
		bounds.DurationOrZero("default_rtt", ll.DefaultRTT, minDefaultRTT, maxDefaultRTT),
	); err != nil {
		return fmt.Errorf("least_latency: %w", err)
	}
	return nil
}

// Cleanup lets go of the estimates, and closes the idle connections of
// the transport the policy made.
func (ll *LeastLatency) Cleanup() error {
	if ll.table != nil {
		releaseEstimates(ll.estimator)
	}
	if ll.ownTransport != nil {
		return ll.ownTransport.Cleanup()
	}
	return nil
}

// Select returns the cheaper of two available upstreams drawn at random,
// or nil when none is available.
func (ll *LeastLatency) Select(upstreams reverseproxy.UpstreamPool, r *http.Request, _ http.ResponseWriter) *reverseproxy.Upstream {
	if p := pool.PreselectionBy(r, ll, upstreams); p != nil {
		return ll.selectCandidate(upstreams, p)
	}
	lp := ll.pools.get(upstreams, r, nil, ll.build)
	first, second := twoChoices(len(upstreams), func(i int) bool {
		return lp.weights[i] > 0 && upstreams[i].Available()
	})
	return ll.cheaper(lp, upstreams, first, second, func(i int) int { return i })
}

// Preselect names up to pool.MaxCandidates distinct instances of s with
// weight, drawn at random: Select takes the cheaper of the first two of
// them that are available, the power of two choices over the pool.
func (ll *LeastLatency) Preselect(s *pool.Snapshot, _ *http.Request, candidates []int) []int {
	lp := ll.pools.forSnapshot(s, nil, ll.build)
	named := len(candidates)
	for range drawsPerCandidate * pool.MaxCandidates {
		if len(candidates)-named == pool.MaxCandidates {
			break
		}
		if i := rand.IntN(len(s.Instances)); lp.weights[i] > 0 && !slices.Contains(candidates[named:], i) {
			candidates = append(candidates, i)
		}
	}
	return candidates
}

// drawsPerCandidate bounds the random draws Preselect makes, per candidate
// it names: a pool in which most instances have weight 0 gets fewer.
const drawsPerCandidate = 4

// selectCandidate returns the cheaper of the first two available of the
// candidates that Preselect named, or nil when none is available.
func (ll *LeastLatency) selectCandidate(candidates reverseproxy.UpstreamPool, p *pool.Preselection) *reverseproxy.Upstream {
	first, second := -1, -1
	for k, u := range candidates {
		if !u.Available() {
			continue
		}
		if first >= 0 {
			second = k
			break
		}
		first = k
	}
	lp := ll.pools.forSnapshot(p.Snapshot, nil, ll.build)
	return ll.cheaper(lp, candidates, first, second, func(k int) int { return p.Candidates[k] })
}

// cheaper returns the cheaper of upstreams[first] and upstreams[second]
// (-1: none), the members of lp at member(first) and member(second).
func (ll *LeastLatency) cheaper(lp *latencyPool, upstreams reverseproxy.UpstreamPool, first, second int, member func(int) int) *reverseproxy.Upstream {
	if first < 0 {
		return nil
	}
	if second < 0 {
		return upstreams[first]
	}
	now := clock()
	if ll.cost(lp, member(second), upstreams[second], now) < ll.cost(lp, member(first), upstreams[first], now) {
		return upstreams[second]
	}
	return upstreams[first]
}

// cost returns the cost of sending u, member i of lp, one more request at
// time now.
func (ll *LeastLatency) cost(lp *latencyPool, i int, u *reverseproxy.Upstream, now time.Duration) float64 {
	return ll.estimator.cost(&lp.estimate(i).estimate, now, u.NumRequests(), lp.weights[i])
}

// latencyPool is a pool's estimates and weights, in the order of its
// upstreams.
type latencyPool struct {
	table     *estimates
	dials     []string
	estimates []atomic.Pointer[tracked]
	weights   []int
}

// build looks up the estimates of a pool's upstreams.
func (ll *LeastLatency) build(dials []string, weights []int) *latencyPool {
	lp := &latencyPool{table: ll.table, dials: dials, weights: weights, estimates: make([]atomic.Pointer[tracked], len(dials))}
	for i, dial := range dials {
		lp.estimates[i].Store(ll.table.lookup(dial))
	}
	return lp
}

// estimate returns the estimate of upstream i, looking it up again if the
// table dropped it.
func (lp *latencyPool) estimate(i int) *tracked {
	e := lp.estimates[i].Load()
	if e.dropped.Load() {
		e = lp.table.lookup(lp.dials[i])
		lp.estimates[i].Store(e)
	}
	return e
}

// Interface guards
var (
	_ caddy.Provisioner     = (*LeastLatency)(nil)
	_ caddy.Validator       = (*LeastLatency)(nil)
	_ caddy.CleanerUpper    = (*LeastLatency)(nil)
	_ reverseproxy.Selector = (*LeastLatency)(nil)
	_ pool.Preselector      = (*LeastLatency)(nil)
)
