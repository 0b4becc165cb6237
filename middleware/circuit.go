package middleware

import (
	"sync/atomic"
	"time"
)

// Circuit states.
const (
	closed int32 = iota
	open
	halfOpen
)

// windowBuckets is how many buckets a failure window is counted in.
const windowBuckets = 10

// circuitSettings are what a breaker's circuits share.
type circuitSettings struct {
	failureRatio        float64
	minRequests         int64
	consecutiveFailures int32 // 0: off
	window              time.Duration
	openFor             time.Duration
	halfOpenRequests    int32
}

// circuit is one breaker's state machine: closed (counting outcomes), open
// (refusing until a time), half-open (letting a few probes through). Every
// transition is a compare-and-swap: no request takes a lock, and a closed
// circuit, the common case, costs two atomic operations per request.
type circuit struct {
	state       atomic.Int32
	openUntil   atomic.Int64 // unix nanoseconds
	consecutive atomic.Int32
	window      slidingWindow
	// probes admitted and passed while half-open; reset on opening, when
	// nothing reads them.
	probesAdmitted, probesPassed atomic.Int32
}

// transition is what recording an outcome did to a circuit.
type transition int

const (
	stayed transition = iota
	opened
	reclosed
)

// admit reports whether a request may pass at now, or else how long until
// the circuit half-opens.
func (c *circuit) admit(now time.Time, s *circuitSettings) (bool, time.Duration) {
	state := c.state.Load()
	if state == open {
		until := c.openUntil.Load()
		if wait := time.Duration(until - now.UnixNano()); wait > 0 {
			return false, wait
		}
		c.state.CompareAndSwap(open, halfOpen)
		state = halfOpen
	}
	if state == halfOpen && c.probesAdmitted.Add(1) > s.halfOpenRequests {
		return false, s.openFor // the probes decide before then
	}
	return true, 0
}

// record counts the outcome of an admitted request, and trips or closes
// the circuit.
func (c *circuit) record(failed bool, now time.Time, s *circuitSettings) transition {
	switch c.state.Load() {
	case closed:
		c.window.add(now, failed, s.window)
		if !failed {
			if c.consecutive.Load() != 0 { // a load leaves a shared cache line shared
				c.consecutive.Store(0)
			}
			return stayed
		}
		n := c.consecutive.Add(1)
		if (s.consecutiveFailures > 0 && n >= s.consecutiveFailures) || c.window.tripped(now, s) {
			return c.trip(closed, now, s)
		}
	case halfOpen:
		if failed {
			return c.trip(halfOpen, now, s)
		}
		if c.probesPassed.Add(1) >= s.halfOpenRequests && c.state.CompareAndSwap(halfOpen, closed) {
			c.window.reset()
			c.consecutive.Store(0)
			return reclosed
		}
	}
	return stayed // open: the request was admitted before the circuit opened
}

// trip opens the circuit from state from, unless another request did. The
// probe counts are reset only by the request that opened it, while nothing
// reads them: open_for passes before the next probe is admitted.
func (c *circuit) trip(from int32, now time.Time, s *circuitSettings) transition {
	c.openUntil.Store(now.Add(s.openFor).UnixNano())
	if !c.state.CompareAndSwap(from, open) {
		return stayed
	}
	c.probesAdmitted.Store(0)
	c.probesPassed.Store(0)
	return opened
}

// slidingWindow counts requests and failures over the last window, in
// buckets of a tenth of it.
type slidingWindow struct {
	buckets [windowBuckets]windowBucket
}

type windowBucket struct {
	epoch              atomic.Int64 // which tenth of time the counts are for
	requests, failures atomic.Int64
}

func (w *slidingWindow) add(now time.Time, failed bool, window time.Duration) {
	epoch := now.UnixNano() / int64(window/windowBuckets)
	b := &w.buckets[epoch%windowBuckets]
	if seen := b.epoch.Load(); seen != epoch && b.epoch.CompareAndSwap(seen, epoch) {
		b.requests.Store(0)
		b.failures.Store(0)
	}
	b.requests.Add(1)
	if failed {
		b.failures.Add(1)
	}
}

// tripped reports whether the window holds enough requests with enough
// failures to open the circuit.
func (w *slidingWindow) tripped(now time.Time, s *circuitSettings) bool {
	current := now.UnixNano() / int64(s.window/windowBuckets)
	var requests, failures int64
	for i := range w.buckets {
		b := &w.buckets[i]
		if current-b.epoch.Load() < windowBuckets {
			requests += b.requests.Load()
			failures += b.failures.Load()
		}
	}
	return requests >= s.minRequests && float64(failures) >= s.failureRatio*float64(requests)
}

func (w *slidingWindow) reset() {
	for i := range w.buckets {
		w.buckets[i].epoch.Store(0)
		w.buckets[i].requests.Store(0)
		w.buckets[i].failures.Store(0)
	}
}
