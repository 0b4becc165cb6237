package consul

import (
	"context"
	"math/rand/v2"
	"time"

	"golang.org/x/time/rate"
)

// Tuning of every loop of requests to Consul. They are constants, not
// options: they keep Consul safe from caddymesh whatever the config says.
const (
	// QueryInterval and QueryBurst rate-limit each loop's requests: a
	// quiet subject is answered at once, a churning one degrades into
	// polling ten times a second instead of hammering Consul's servers.
	QueryInterval = 100 * time.Millisecond
	// QueryBurst is how many requests may go at once before the interval
	// applies.
	QueryBurst = 2

	// RetryBase and RetryMax bound the exponential backoff (with jitter)
	// after failed requests.
	RetryBase = 50 * time.Millisecond
	// RetryMax caps the backoff.
	RetryMax = 2 * time.Second
)

// Clock is the time as a loop sees it: the wall clock in production,
// injected by tests of timing logic so that they neither sleep nor race
// the clock.
type Clock interface {
	// Now is the current time.
	Now() time.Time
	// Sleep waits for d or until ctx is done, and reports whether d
	// passed.
	Sleep(ctx context.Context, d time.Duration) bool
}

// RealClock is the wall clock.
var RealClock Clock = wallClock{}

type wallClock struct{}

func (wallClock) Now() time.Time { return time.Now() }

func (wallClock) Sleep(ctx context.Context, d time.Duration) bool { return Sleep(ctx, d) }

// Limiter rate-limits a loop's requests.
type Limiter interface {
	// Reserve takes the next request's turn at now, and returns how long
	// to wait for it.
	Reserve(now time.Time) time.Duration
}

// NewLimiter returns the limiter of every loop of requests to Consul:
// bursts of QueryBurst, then one request per QueryInterval.
func NewLimiter() Limiter {
	return tokenBucket{rate.NewLimiter(rate.Every(QueryInterval), QueryBurst)}
}

type tokenBucket struct{ *rate.Limiter }

func (b tokenBucket) Reserve(now time.Time) time.Duration {
	return b.ReserveN(now, 1).DelayFrom(now)
}

// Pacer paces a loop of requests to Consul, what the watches and the
// registrar share: the limiter before every request, and capped, jittered
// exponential backoff after each failure in a row.
type Pacer struct {
	clock    Clock
	limiter  Limiter
	failures int // in a row
}

// NewPacer returns a pacer on clock c with limiter l; nil ones are the
// real clock and NewLimiter's.
func NewPacer(c Clock, l Limiter) *Pacer {
	if c == nil {
		c = RealClock
	}
	if l == nil {
		l = NewLimiter()
	}
	return &Pacer{clock: c, limiter: l}
}

// Clock is the pacer's clock.
func (p *Pacer) Clock() Clock { return p.clock }

// Failures is how many requests in a row failed.
func (p *Pacer) Failures() int { return p.failures }

// Ready waits for the rate limit, and reports false when ctx is done.
func (p *Pacer) Ready(ctx context.Context) bool {
	delay := p.limiter.Reserve(p.clock.Now())
	if delay == 0 {
		return ctx.Err() == nil
	}
	return p.clock.Sleep(ctx, delay)
}

// Failed counts a failure and backs off; it reports false when ctx is
// done.
func (p *Pacer) Failed(ctx context.Context) bool {
	p.failures++
	return p.clock.Sleep(ctx, Backoff(p.failures))
}

// Succeeded ends a run of failures.
func (p *Pacer) Succeeded() { p.failures = 0 }

// Backoff is the pause after the n-th failure in a row: exponential from
// RetryBase up to RetryMax, with half of it random so that loops that
// failed together do not retry together.
func Backoff(failures int) time.Duration {
	d := min(RetryBase<<min(failures-1, 16), RetryMax)
	return d/2 + rand.N(d/2)
}

// Sleep waits for d or until ctx is done, and reports whether d passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
