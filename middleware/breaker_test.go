package middleware

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// dependency is a next handler whose answer the test sets.
type dependency struct {
	calls  atomic.Int64
	status atomic.Int64 // 0: 200
	err    atomic.Pointer[error]
}

func (d *dependency) ServeHTTP(w http.ResponseWriter, _ *http.Request) error {
	d.calls.Add(1)
	if err := d.err.Load(); err != nil {
		return *err
	}
	w.WriteHeader(max(http.StatusOK, int(d.status.Load())))
	return nil
}

func (d *dependency) fail(err error) { d.err.Store(&err) }
func (d *dependency) heal()          { d.err.Store(nil); d.status.Store(0) }

// newBreaker provisions b, quiet: the tests trip many circuits.
func newBreaker(t testing.TB, b *Breaker) *Breaker {
	provision(t, b)
	b.logger = zap.NewNop()
	return b
}

func TestBreakerOpensThenAnswersWithoutCallingTheDependency(t *testing.T) {
	b := newBreaker(t, &Breaker{MinRequests: 10, OpenFor: caddy.Duration(time.Hour)})
	dep := new(dependency)
	dep.status.Store(http.StatusBadGateway)
	for range 10 {
		if a := serve(b, request("GET", "/"), dep); a.status != http.StatusBadGateway {
			t.Fatalf("a closed circuit answered %d, want the dependency's 502", a.status)
		}
	}
	a := serve(b, request("GET", "/"), dep)
	if a.status != http.StatusServiceUnavailable || a.retryAfter != "3600" || !errors.Is(a.err, errCircuitOpen) {
		t.Errorf("an open circuit answered %d (%v) with Retry-After %q, want 503 with 3600", a.status, a.err, a.retryAfter)
	}
	if calls := dep.calls.Load(); calls != 10 {
		t.Errorf("the dependency was called %d times, want 10: none once the circuit opened", calls)
	}
}

func TestBreakerCountsWhatFails(t *testing.T) {
	for _, tc := range []struct {
		name     string
		breaker  Breaker
		dep      func(*dependency)
		failures bool
	}{
		{"5xx status", Breaker{}, func(d *dependency) { d.status.Store(503) }, true},
		{"4xx status", Breaker{}, func(d *dependency) { d.status.Store(404) }, false},
		{"status listed", Breaker{FailureStatus: []string{"5xx", "429"}}, func(d *dependency) { d.status.Store(429) }, true},
		{"class not listed", Breaker{FailureStatus: []string{"429"}}, func(d *dependency) { d.status.Store(500) }, false},
		{"transport error", Breaker{}, func(d *dependency) { d.fail(errors.New("dial tcp: connection refused")) }, true},
		{"handler error 502", Breaker{}, func(d *dependency) { d.fail(caddyhttp.Error(502, errors.New("bad gateway"))) }, true},
		{"handler error 404", Breaker{}, func(d *dependency) { d.fail(caddyhttp.Error(404, errors.New("not found"))) }, false},
		{"client gone", Breaker{}, func(d *dependency) { d.fail(fmt.Errorf("proxying: %w", context.Canceled)) }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.breaker.MinRequests = 5
			b := newBreaker(t, &tc.breaker)
			dep := new(dependency)
			tc.dep(dep)
			for range 5 {
				serve(b, request("GET", "/"), dep)
			}
			opened := serve(b, request("GET", "/"), dep).status == http.StatusServiceUnavailable && dep.calls.Load() == 5
			if opened != tc.failures {
				t.Errorf("circuit open after five: %v, want %v", opened, tc.failures)
			}
		})
	}
}

// tickingClock is a clock that moves on by tick at each reading, from
// the process's start, so that a test goes through time without sleeping.
type tickingClock struct {
	ticks atomic.Int64
	tick  time.Duration
}

func (c *tickingClock) now() time.Time {
	return started.Add(time.Duration(c.ticks.Add(1)) * c.tick)
}

func TestBreakerCountsSlowResponsesWithALatencyThreshold(t *testing.T) {
	b := newBreaker(t, &Breaker{ConsecutiveFailures: 2, LatencyThreshold: caddy.Duration(time.Millisecond)})
	at := started // the breaker's clock: it moves only when the handler takes its time
	b.now = func() time.Time { return at }
	slow := caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error {
		at = at.Add(5 * time.Millisecond)
		return nil
	})
	fast := caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error {
		at = at.Add(time.Millisecond / 2)
		return nil
	})
	serve(b, request("GET", "/"), fast)
	serve(b, request("GET", "/"), fast)
	if a := serve(b, request("GET", "/"), ok); a.status != http.StatusOK {
		t.Fatalf("after two responses faster than latency_threshold: %d, want 200", a.status)
	}
	serve(b, request("GET", "/"), slow)
	serve(b, request("GET", "/"), slow)
	if a := serve(b, request("GET", "/"), ok); a.status != http.StatusServiceUnavailable {
		t.Errorf("after two responses slower than latency_threshold: %d, want 503", a.status)
	}
}

func TestBreakerProbesCloseTheCircuitWhenTheDependencyHeals(t *testing.T) {
	b := newBreaker(t, &Breaker{ConsecutiveFailures: 3, OpenFor: caddy.Duration(50 * time.Millisecond), HalfOpenRequests: 2})
	dep := new(dependency)
	dep.status.Store(500)
	for range 3 {
		serve(b, request("GET", "/"), dep)
	}
	dep.heal()
	waitFor(t, "the circuit to half-open and close", func() bool {
		return serve(b, request("GET", "/"), dep).status == http.StatusOK
	})
	for range 100 {
		if a := serve(b, request("GET", "/"), dep); a.status != http.StatusOK {
			t.Fatalf("a closed circuit answered %d", a.status)
		}
	}
}

func TestBreakerKeysHaveCircuitsOfTheirOwn(t *testing.T) {
	b := newBreaker(t, &Breaker{Key: "{http.request.host}", ConsecutiveFailures: 1, OpenFor: caddy.Duration(time.Hour)})
	dep := new(dependency)
	dep.status.Store(500)
	bad := request("GET", "http://bad.example/")
	serve(b, bad, dep)
	if a := serve(b, bad, dep); a.status != http.StatusServiceUnavailable {
		t.Fatalf("bad.example's circuit: %d, want open", a.status)
	}
	dep.heal()
	if a := serve(b, request("GET", "http://good.example/"), dep); a.status != http.StatusOK {
		t.Errorf("good.example's circuit: %d, want closed", a.status)
	}
	states := circuitStates()
	if states["bad.example"] != open || states["good.example"] != closed {
		t.Errorf("states %v, want bad.example open (1) and good.example closed (0)", states)
	}
}

// TestBreakerUnderConcurrentLoad runs a breaker, under the race detector,
// through a dependency that fails and heals while many goroutines call: no
// refused request may reach the dependency, and the circuit must open, and
// close once the dependency stays healthy.
func TestBreakerUnderConcurrentLoad(t *testing.T) {
	b := newBreaker(t, &Breaker{MinRequests: 20, OpenFor: caddy.Duration(time.Millisecond), HalfOpenRequests: 3})
	clock := &tickingClock{tick: time.Microsecond} // open_for passes in a thousand readings
	b.now = clock.now
	dep := new(dependency)
	// Failing from the first call, so that the circuit opens however the
	// callers are scheduled (with a head start of healthy calls, the failures
	// of a phase could stay below the ratio of the window).
	dep.status.Store(500)
	var refused, passed atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for range 2000 {
				if errors.Is(serve(b, request("GET", "/"), dep).err, errCircuitOpen) {
					refused.Add(1)
				} else {
					passed.Add(1)
				}
			}
		})
	}
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	// lasts waits for n readings of the clock, or for the callers to end.
	lasts := func(n int64) bool {
		for until := clock.ticks.Load() + n; clock.ticks.Load() < until; runtime.Gosched() {
			select {
			case <-finished:
				return false
			default:
			}
		}
		return true
	}
	for range 20 { // fail, then heal, each for a thousand readings of the clock
		if !lasts(1000) {
			break
		}
		dep.heal()
		if !lasts(1000) {
			break
		}
		dep.status.Store(500)
	}
	<-finished
	if calls := dep.calls.Load(); calls != passed.Load() || refused.Load() == 0 {
		t.Errorf("%d refused, %d passed and %d calls to the dependency: want the circuit to have opened, and the calls to be those passed", refused.Load(), passed.Load(), calls)
	}
	dep.heal()
	waitFor(t, "the circuit to close once the dependency is healthy", func() bool {
		return serve(b, request("GET", "/"), dep).status == http.StatusOK
	})
}

func TestBreakerRejectsBadSettings(t *testing.T) {
	for _, tc := range []struct {
		breaker Breaker
		want    string
	}{
		{Breaker{FailureRatio: 1.5}, "failure_ratio 1.5: must be from 0 to 1"},
		{Breaker{FailureRatio: -0.1}, "failure_ratio -0.1"},
		{Breaker{MinRequests: -1}, "min_requests -1"},
		{Breaker{Window: -1}, "window -1ns"},
		{Breaker{Window: 5}, "window 5ns: must be from 100ms to 1h0m0s"}, // divided by zero per request
		{Breaker{Window: caddy.Duration(2 * time.Hour)}, "window 2h0m0s: must be from 100ms to 1h0m0s"},
		{Breaker{MinRequests: 2_000_000}, "min_requests 2000000: must be from 1 to 1000000"},
		{Breaker{OpenFor: caddy.Duration(2 * time.Hour)}, "open_for 2h0m0s: must be from 1ms to 1h0m0s"},
		{Breaker{HalfOpenRequests: 1001}, "half_open_requests 1001: must be from 1 to 1000"},
		{Breaker{ConsecutiveFailures: -3}, "consecutive_failures -3"},
		{Breaker{LatencyThreshold: -1}, "latency_threshold -1ns"},
		{Breaker{OpenFor: -1}, "open_for -1ns"},
		{Breaker{HalfOpenRequests: -1}, "half_open_requests -1"},
		{Breaker{FailureStatus: []string{"6xx"}}, `failure_status "6xx"`},
		{Breaker{FailureStatus: []string{"teapot"}}, `failure_status "teapot"`},
		{Breaker{FailureStatus: []string{"99"}}, `failure_status "99"`},
	} {
		err := tc.breaker.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want one saying %q", tc.breaker, err, tc.want)
		}
	}
}
