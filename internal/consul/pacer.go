package discovery

import (
	"context"
	"math/rand/v2"
	"time"

	"golang.org/x/time/rate"
)

// Tuning of every loop of requests to Consul. They are constants, not
// options: they keep Consul safe from caddymesh whatever the config says.
const (
	// queryInterval and queryBurst rate-limit each loop's requests: a
	// quiet subject is answered at once, a churning one degrades into
	// polling ten times a second instead of hammering Consul's servers.
	queryInterval = 100 * time.Millisecond
	queryBurst    = 2

	// retryBase and retryMax bound the exponential backoff (with jitter)
	// after failed requests.
	retryBase = 50 * time.Millisecond
	retryMax  = 2 * time.Second
)

// clock is the time as a loop sees it: real in production, injected by
// tests of timing logic so that they neither sleep nor race the clock.
type clock struct {
	now   func() time.Time
	sleep func(ctx context.Context, d time.Duration) bool // reports whether d passed
}

// realClock is the wall clock.
var realClock = clock{now: time.Now, sleep: sleep}

// pacer paces a loop of requests to Consul, what the watchers and the
// registrar share: a token bucket before every request, and capped,
// jittered exponential backoff after each failure in a row.
type pacer struct {
	clock    clock
	limiter  *rate.Limiter
	failures int // in a row
}

func newPacer(c clock) *pacer {
	return &pacer{clock: c, limiter: rate.NewLimiter(rate.Every(queryInterval), queryBurst)}
}

// ready waits for the rate limit, and reports false when ctx is done.
func (p *pacer) ready(ctx context.Context) bool {
	now := p.clock.now()
	delay := p.limiter.ReserveN(now, 1).DelayFrom(now)
	if delay == 0 {
		return ctx.Err() == nil
	}
	return p.clock.sleep(ctx, delay)
}

// failed counts a failure and backs off; it reports false when ctx is
// done.
func (p *pacer) failed(ctx context.Context) bool {
	p.failures++
	return p.clock.sleep(ctx, backoff(p.failures))
}

// succeeded ends a run of failures.
func (p *pacer) succeeded() { p.failures = 0 }

// backoff is the pause after the n-th failure in a row: exponential from
// retryBase up to retryMax, with half of it random so that loops that
// failed together do not retry together.
func backoff(failures int) time.Duration {
	d := min(retryBase<<min(failures-1, 16), retryMax)
	return d/2 + rand.N(d/2)
}

// sleep waits for d or until ctx is done, and reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
