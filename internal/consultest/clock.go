package consultest

import (
	"context"
	"sync"
	"time"
)

// Clock is a fake consul.Clock: it moves only when told (Add), or, when
// it advances, by every Sleep, which then returns at once. It counts the
// sleeps, so that a test can tell a loop that never waited from one that
// waited as long as it should.
type Clock struct {
	mu      sync.Mutex
	t       time.Time
	advance bool
	sleeps  []time.Duration
}

// NewClock returns a clock at a fixed date; with advance, each Sleep moves
// it by the time slept.
func NewClock(advance bool) *Clock {
	return &Clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), advance: advance}
}

// Now is the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Add moves the clock by d.
func (c *Clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// Sleep records d, moves the clock by it when it advances, and returns at
// once: true unless ctx is done.
func (c *Clock) Sleep(ctx context.Context, d time.Duration) bool {
	c.mu.Lock()
	c.sleeps = append(c.sleeps, d)
	if c.advance {
		c.t = c.t.Add(d)
	}
	c.mu.Unlock()
	return ctx.Err() == nil
}

// Sleeps are the durations slept so far, in order.
func (c *Clock) Sleeps() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.sleeps...)
}
