package lbpolicy

import (
	"math"
	"sync/atomic"
)

// loadEstimate estimates the total of a pool's in-flight requests for
// bounded loads (Mirrokni, Thorup and Zadimoghaddam, "Consistent Hashing
// with Bounded Loads", 2016), without a pass over the pool per request.
//
// It keeps the last load seen of each member and their sum. Every pick
// refreshes the members it considers and one more, in rotation, so no
// member's figure is more than a pool's worth of picks old.
type loadEstimate struct {
	seen  []atomic.Int64
	total atomic.Int64
	rotor atomic.Uint64
}

// newLoadEstimate starts an estimate from the members' current loads.
func newLoadEstimate(loads []int64) *loadEstimate {
	e := &loadEstimate{seen: make([]atomic.Int64, len(loads))}
	for i, load := range loads {
		e.observe(i, load)
	}
	return e
}

// observe records that member has load requests in flight.
func (e *loadEstimate) observe(member int, load int64) {
	e.total.Add(load - e.seen[member].Swap(load))
}

// refreshNext observes the next member in rotation.
func (e *loadEstimate) refreshNext(load func(member int) int64) {
	if len(e.seen) == 0 {
		return
	}
	member := int(e.rotor.Add(1) % uint64(len(e.seen)))
	e.observe(member, load(member))
}

// capacity is how many requests a member of the given share of the
// pool's weight may have in flight when one more arrives: the ceiling of
// factor times its share of all in-flight requests, the new one included.
func (e *loadEstimate) capacity(factor float64, weight, totalWeight int) int64 {
	inFlight := float64(max(e.total.Load(), 0) + 1)
	return int64(math.Ceil(factor * inFlight * float64(weight) / float64(totalWeight)))
}
