package lbpolicy

import (
	"math"
	"sync/atomic"
	"time"
)

// peakEWMA is Finagle's and Linkerd's latency estimator (Finagle's
// PeakEwma, tower's and linkerd2-proxy's PeakEwma): per upstream, an
// estimate of its round-trip time that jumps to any sample above it (the
// peak) and otherwise moves towards new samples with the weight
// exp(-Δt/decay), Δt being the time since the last sample. Between
// samples the estimate decays towards zero at the same rate, so an
// upstream that was slow is tried again in time.
//
// The cost of sending an upstream one more request is its estimate times
// its requests in flight plus one, divided by its weight (tower's
// Weighted): a power-of-two-choices policy sends the request to the
// cheaper of two upstreams. An upstream with no sample yet is probed at
// once: idle, it costs nothing; with requests in flight, the default
// estimate for each (Finagle).
//
// Failures count (linkerd2-proxy#4537): a connection error or a 5xx or
// 429 answered fast must not make an upstream look fast, so a failure
// records a penalty as a peak instead of its round-trip time; a
// Retry-After holds the penalty, undecayed, until that time.
//
// Times are durations on one monotonic clock, passed in by the caller.
type peakEWMA struct {
	// decay is the time constant of the decay, in nanoseconds.
	decay float64
	// defaultRTT is the estimate of an upstream with no sample yet.
	defaultRTT time.Duration
}

// failurePenalty is the round-trip time a failure counts as: Linkerd's
// base penalty. With the default decay of 10s, an upstream whose answer
// failed gets no request for a minute or two while its peers answer
// within a millisecond, then one that probes it.
const failurePenalty = 5 * time.Second

// maxRetryAfter caps how long a Retry-After holds a penalty (Linkerd's cap).
const maxRetryAfter = 5 * time.Minute

// estimate is one upstream's latency estimate. Its state is an immutable
// sample behind an atomic pointer: reading it is one load, and an update
// replaces it, so neither takes a lock.
type estimate struct {
	last atomic.Pointer[sample]
}

// sample is an estimate's state.
type sample struct {
	// rtt is the estimate at time at, in nanoseconds.
	rtt float64
	// at is when the estimate starts to decay: when it was last updated,
	// or, for a penalty held by a Retry-After, when the hold ends.
	at time.Duration
	// measured is false while rtt is the default, before any sample.
	measured bool
}

// start sets e to the estimate of an upstream with no sample yet: the
// default, decaying from now.
func (p peakEWMA) start(e *estimate, now time.Duration) {
	e.last.Store(&sample{rtt: float64(p.defaultRTT), at: now})
}

// decayed returns the estimate s stands for at time now.
func (p peakEWMA) decayed(s *sample, now time.Duration) float64 {
	return s.rtt * p.weight(s, now)
}

// weight returns the weight exp(-Δt/decay) that s keeps at time now.
func (p peakEWMA) weight(s *sample, now time.Duration) float64 {
	if now <= s.at {
		return 1
	}
	return math.Exp(-float64(now-s.at) / p.decay)
}

// cost returns the cost of sending an upstream with estimate e, inFlight
// requests in flight and the given weight (at least 1) one more request.
// An upstream with no sample yet costs nothing while it has no request in
// flight, so a new upstream gets a request at once, and the default for
// each request in flight after that, until it answers (Finagle's penalty
// for a node with no history).
func (p peakEWMA) cost(e *estimate, now time.Duration, inFlight, weight int) float64 {
	s := e.last.Load()
	if s.measured {
		inFlight++
	}
	return p.decayed(s, now) * float64(inFlight) / float64(weight)
}

// observe records a round trip that took rtt and succeeded, at time now.
// The first sample replaces the default, as in Finagle, whose estimate
// starts from none.
func (p peakEWMA) observe(e *estimate, rtt, now time.Duration) {
	p.update(e, func(last *sample) *sample {
		sampled := float64(rtt)
		if last.measured && sampled < p.decayed(last, now) {
			w := p.weight(last, now)
			sampled = last.rtt*w + sampled*(1-w)
		}
		return &sample{rtt: sampled, at: max(now, last.at), measured: true}
	})
}

// penalize records a failed round trip at time now: the estimate becomes
// failurePenalty, or stays where it is when that is higher, and is held
// until now+hold before it decays (hold is the Retry-After, capped at
// maxRetryAfter; 0 for none).
func (p peakEWMA) penalize(e *estimate, hold, now time.Duration) {
	hold = min(max(hold, 0), maxRetryAfter)
	p.update(e, func(last *sample) *sample {
		rtt := max(float64(failurePenalty), p.decayed(last, now))
		return &sample{rtt: rtt, at: max(now+hold, last.at), measured: true}
	})
}

// update replaces e's state with next(state), retrying when another
// update came in between.
func (p peakEWMA) update(e *estimate, next func(*sample) *sample) {
	for {
		last := e.last.Load()
		if e.last.CompareAndSwap(last, next(last)) {
			return
		}
	}
}
