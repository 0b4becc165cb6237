// Package lbpolicy holds caddymesh's selection policies for Caddy's
// reverse_proxy: smooth_weighted (nginx's smooth weighted round robin),
// consistent_hash (a weighted consistent-hash ring with bounded loads) and
// least_latency (peak-EWMA with the power of two choices).
//
// Each builds a structure for a pool of upstreams once, and picks from it
// in O(1) with no allocation. They work with any upstreams: static ones, those
// of the consul source (whose weights they use), and those of Caddy's other
// dynamic sources.
package lbpolicy

import (
	"fmt"
	"net/http"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddymesh/caddymesh/internal/pool"
)

// maxConfiguredWeight is the largest weight a config may give an upstream.
const maxConfiguredWeight = 1000

// Weights are weights by upstream dial address, as configured.
type Weights map[string]int

// validate rejects negative and too large weights, naming them.
func (w Weights) validate() error {
	for dial, weight := range w {
		if weight < 0 || weight > maxConfiguredWeight {
			return fmt.Errorf("weight of %q: %d must be from 0 to %d", dial, weight, maxConfiguredWeight)
		}
	}
	return nil
}

// of returns the weight of the upstream at each dial address: its
// configured weight if it has one, else its weight in Consul when it came
// from the consul source, else 1.
func (w Weights) of(dials []string, snapshot *pool.Snapshot) []int {
	weights := make([]int, len(dials))
	for i, dial := range dials {
		switch configured, ok := w[dial]; {
		case ok:
			weights[i] = configured
		case snapshot != nil:
			weights[i] = snapshot.Instances[i].Weight
		default:
			weights[i] = 1
		}
	}
	return weights
}

// builtFor caches what a policy builds for a pool of upstreams (a schedule,
// a ring), for the last pool it saw. Building costs O(pool); recognizing the
// pool again costs O(1) for static upstreams and the consul source's, and
// a comparison of addresses for other dynamic sources.
type builtFor[T any] struct {
	last atomic.Pointer[built[T]]
}

// built is a structure and the pool it was built for.
type built[T any] struct {
	value T
	// version is the consul snapshot's version; 0 when the pool was not
	// the consul source's.
	version uint64
	// first is the pool's first upstream: a static pool hands the same
	// Upstream values to every request.
	first *reverseproxy.Upstream
	// dials are the upstreams' addresses.
	dials []string
}

// buildFunc builds a policy's structure for a pool: the upstreams' dial
// addresses and weights.
type buildFunc[T any] func(dials []string, weights []int) T

// get returns the structure for the upstreams of r, building it with
// build when the pool is new.
func (b *builtFor[T]) get(upstreams []*reverseproxy.Upstream, r *http.Request, weights Weights, build buildFunc[T]) T {
	last := b.last.Load()
	if last != nil && last.isStaticPool(upstreams) {
		return last.value
	}
	snapshot := snapshotOf(r, upstreams)
	if last != nil && last.isFor(upstreams, snapshot) {
		return last.value
	}
	dials := make([]string, len(upstreams))
	for i, u := range upstreams {
		dials[i] = u.Dial
	}
	var first *reverseproxy.Upstream
	if len(upstreams) > 0 {
		first = upstreams[0]
	}
	return b.rebuild(dials, first, snapshot, weights, build)
}

// forSnapshot returns the structure for a consul snapshot, building it with
// build when the snapshot is new: a preselection is made from the snapshot
// alone.
func (b *builtFor[T]) forSnapshot(snapshot *pool.Snapshot, weights Weights, build buildFunc[T]) T {
	if last := b.last.Load(); last != nil && last.version == snapshot.Version {
		return last.value
	}
	dials := make([]string, len(snapshot.Instances))
	for i, instance := range snapshot.Instances {
		dials[i] = instance.Dial
	}
	return b.rebuild(dials, nil, snapshot, weights, build)
}

// rebuild builds the structure for the pool of upstreams at dials (whose
// first Upstream value is first, for a static pool; from snapshot, when
// not nil), keeps it for the next requests and returns it.
func (b *builtFor[T]) rebuild(dials []string, first *reverseproxy.Upstream, snapshot *pool.Snapshot, weights Weights, build buildFunc[T]) T {
	next := &built[T]{value: build(dials, weights.of(dials, snapshot)), first: first, dials: dials}
	if snapshot != nil {
		next.version = snapshot.Version
	}
	b.last.Store(next)
	return next.value
}

// firstAvailable returns the index of the first available upstream, or -1.
func firstAvailable(upstreams []*reverseproxy.Upstream) int {
	for i, u := range upstreams {
		if u.Available() {
			return i
		}
	}
	return -1
}

// isStaticPool reports whether upstreams are the very Upstream values b was
// built for, as a static pool's are.
func (b *built[T]) isStaticPool(upstreams []*reverseproxy.Upstream) bool {
	return b.version == 0 && len(upstreams) > 0 && len(upstreams) == len(b.dials) && upstreams[0] == b.first
}

// isFor reports whether b was built for these upstreams: the same consul
// snapshot, or, for other dynamic sources, the same addresses.
func (b *built[T]) isFor(upstreams []*reverseproxy.Upstream, snapshot *pool.Snapshot) bool {
	if snapshot != nil {
		return b.version == snapshot.Version
	}
	if b.version != 0 || len(upstreams) != len(b.dials) {
		return false
	}
	for i, u := range upstreams {
		if u.Dial != b.dials[i] {
			return false
		}
	}
	return true
}

// snapshotOf returns the consul snapshot behind upstreams, or nil when they
// did not come from the consul source.
func snapshotOf(r *http.Request, upstreams []*reverseproxy.Upstream) *pool.Snapshot {
	s := pool.FromRequest(r)
	if s == nil || len(s.Instances) != len(upstreams) {
		return nil
	}
	if n := len(upstreams); n > 0 && (s.Instances[0].Dial != upstreams[0].Dial || s.Instances[n-1].Dial != upstreams[n-1].Dial) {
		return nil
	}
	return s
}
