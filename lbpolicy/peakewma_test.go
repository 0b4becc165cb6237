package lbpolicy

import (
	"math"
	"sync"
	"testing"
	"time"
)

// ms returns d in milliseconds, as a float, for readable comparisons of
// estimates (which are in nanoseconds).
func ms(nanoseconds float64) float64 { return nanoseconds / 1e6 }

// near reports whether got is within 0.1% of want.
func near(got, want float64) bool { return math.Abs(got-want) <= 1e-3*math.Abs(want) }

// newEstimate returns an estimate with no sample yet, started at time 0.
func newEstimate(p peakEWMA) *estimate {
	e := new(estimate)
	p.start(e, 0)
	return e
}

func TestPeakEWMA(t *testing.T) {
	p := peakEWMA{decay: float64(10 * time.Second), defaultRTT: 30 * time.Millisecond}
	const second = time.Second

	t.Run("an_upstream_with_no_sample_costs_the_default_decaying", func(t *testing.T) {
		e := newEstimate(p)
		if got := ms(p.current(e, 0)); got != 30 {
			t.Errorf("estimate %v ms, want the default 30 ms", got)
		}
		if got, want := ms(p.current(e, 10*second)), 30*math.Exp(-1); !near(got, want) {
			t.Errorf("after one decay time: %v ms, want 30/e = %v ms", got, want)
		}
	})
	t.Run("the_first_sample_replaces_the_default", func(t *testing.T) {
		e := newEstimate(p)
		p.observe(e, 2*time.Millisecond, second)
		if got := ms(p.current(e, second)); got != 2 {
			t.Errorf("estimate %v ms, want the sample's 2 ms", got)
		}
	})
	t.Run("a_sample_above_the_estimate_is_the_new_peak", func(t *testing.T) {
		e := newEstimate(p)
		p.observe(e, time.Millisecond, second)
		p.observe(e, 20*time.Millisecond, second+time.Millisecond)
		if got := ms(p.current(e, second+time.Millisecond)); got != 20 {
			t.Errorf("estimate %v ms, want the peak 20 ms at once", got)
		}
	})
	t.Run("a_sample_below_moves_the_estimate_by_the_time_since_the_last", func(t *testing.T) {
		e := newEstimate(p)
		p.observe(e, 20*time.Millisecond, 0)
		// 10s later the estimate has decayed to 20/e = 7.36 ms; a 5 ms
		// sample is below it.
		p.observe(e, 5*time.Millisecond, 10*second)
		w := math.Exp(-1)
		if got, want := ms(p.current(e, 10*second)), 20*w+5*(1-w); !near(got, want) {
			t.Errorf("estimate %v ms, want 20·w + 5·(1−w) = %v ms with w = 1/e", got, want)
		}
		// Right after, a sample barely moves it.
		p.observe(e, time.Millisecond, 10*second+time.Millisecond)
		if got := ms(p.current(e, 10*second+time.Millisecond)); got < 10.51 || got > 10.53 {
			t.Errorf("estimate %v ms a millisecond later, want it still about 10.52 ms", got)
		}
	})
	t.Run("a_sample_above_the_decayed_estimate_is_a_peak", func(t *testing.T) {
		e := newEstimate(p)
		p.observe(e, 20*time.Millisecond, 0)
		p.observe(e, 10*time.Millisecond, 10*second) // above 20/e
		if got := ms(p.current(e, 10*second)); got != 10 {
			t.Errorf("estimate %v ms, want the new peak 10 ms", got)
		}
	})
	t.Run("the_estimate_decays_towards_zero_between_samples", func(t *testing.T) {
		e := newEstimate(p)
		p.observe(e, 20*time.Millisecond, 0)
		for _, tt := range []struct {
			at   time.Duration
			want float64
		}{{0, 20}, {5 * second, 20 * math.Exp(-0.5)}, {46 * second, 20 * math.Exp(-4.6)}} {
			if got := ms(p.current(e, tt.at)); !near(got, tt.want) {
				t.Errorf("at %v: %v ms, want %v ms", tt.at, got, tt.want)
			}
		}
	})
	t.Run("cost_is_estimate_times_in_flight_plus_one_over_weight", func(t *testing.T) {
		e := newEstimate(p)
		p.observe(e, 4*time.Millisecond, 0)
		if got := ms(p.cost(e, 0, 3, 2)); got != 8 {
			t.Errorf("cost %v, want 4 ms × (3+1) / 2 = 8", got)
		}
	})
	t.Run("an_upstream_with_no_sample_is_free_until_it_has_a_request_in_flight", func(t *testing.T) {
		e := newEstimate(p)
		if got := p.cost(e, 0, 0, 1); got != 0 {
			t.Errorf("idle: cost %v ms, want 0", ms(got))
		}
		if got := ms(p.cost(e, 0, 2, 1)); got != 60 {
			t.Errorf("two in flight: cost %v ms, want 2 × the 30 ms default", got)
		}
	})
	t.Run("a_fast_failure_is_a_penalty_not_a_fast_sample", func(t *testing.T) {
		e := newEstimate(p)
		p.observe(e, 2*time.Millisecond, 0)
		p.penalize(e, 0, second)
		if got := p.current(e, second); got != float64(failurePenalty) {
			t.Errorf("estimate %v ms after a failure, want the penalty %v", ms(got), failurePenalty)
		}
		p.observe(e, 100*time.Microsecond, second+time.Millisecond) // a request sent before
		if got := p.current(e, second+time.Millisecond); got < 0.99*float64(failurePenalty) {
			t.Errorf("estimate %v ms after a fast success, want it still near the penalty", ms(got))
		}
	})
	t.Run("a_penalty_never_lowers_a_higher_estimate", func(t *testing.T) {
		e := newEstimate(p)
		p.observe(e, 8*time.Second, 0)
		p.penalize(e, 0, 0)
		if got := p.current(e, 0); got != float64(8*time.Second) {
			t.Errorf("estimate %v ms, want the 8s peak kept", ms(got))
		}
	})
	t.Run("retry_after_holds_the_penalty_until_then", func(t *testing.T) {
		e := newEstimate(p)
		p.penalize(e, 30*second, 0)
		for _, at := range []time.Duration{0, 10 * second, 30 * second} {
			if got := p.current(e, at); got != float64(failurePenalty) {
				t.Errorf("at %v: %v ms, want the whole penalty until 30s", at, ms(got))
			}
		}
		if got, want := p.current(e, 40*second), float64(failurePenalty)*math.Exp(-1); !near(got, want) {
			t.Errorf("at 40s: %v ms, want it decayed for 10s: %v ms", ms(got), ms(want))
		}
	})
	t.Run("retry_after_is_capped", func(t *testing.T) {
		e := newEstimate(p)
		p.penalize(e, time.Hour, 0)
		if got := p.current(e, maxRetryAfter+10*second); got >= float64(failurePenalty) {
			t.Errorf("%v after a Retry-After of an hour: %v ms, want it decaying after %v", maxRetryAfter+10*second, ms(got), maxRetryAfter)
		}
	})
	t.Run("concurrent_updates_are_none_lost", func(t *testing.T) {
		e := newEstimate(p)
		p.observe(e, time.Millisecond, 0)
		var wg sync.WaitGroup
		for g := range 8 {
			wg.Go(func() {
				for i := range 1000 {
					p.observe(e, time.Duration(1+g*1000+i)*time.Microsecond, 0)
				}
			})
		}
		wg.Wait()
		// At Δt = 0 a lower sample changes nothing, so the estimate is the
		// highest sample: 1 + 7·1000 + 999 µs.
		if got := p.current(e, 0); got != float64(8000*time.Microsecond) {
			t.Errorf("estimate %v ms, want the highest sample, 8 ms", ms(got))
		}
	})
}

// current returns e's estimate at time now, in nanoseconds.
func (p peakEWMA) current(e *estimate, now time.Duration) float64 {
	return p.decayed(e.last.Load(), now)
}
