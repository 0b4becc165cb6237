package lbpolicy

import (
	"net/http"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddymesh/caddymesh/internal/pool"
)

func TestTwoChoices(t *testing.T) {
	t.Run("draws_two_distinct_members_uniformly", func(t *testing.T) {
		const n, draws = 5, 50000
		var pairs [n][n]int
		for range draws {
			first, second := twoChoices(n, func(int) bool { return true })
			if first == second || first < 0 || second < 0 {
				t.Fatalf("drew %d and %d, want two distinct members", first, second)
			}
			pairs[first][second]++
		}
		// 20 ordered pairs, 2,500 draws each expected; 4 standard deviations
		// is about 190.
		for i := range n {
			for j := range n {
				if got := pairs[i][j]; i != j && (got < 2300 || got > 2700) {
					t.Errorf("pair (%d, %d) drawn %d times, want about 2500", i, j, got)
				}
			}
		}
	})
	t.Run("only_usable_members", func(t *testing.T) {
		for range 1000 {
			first, second := twoChoices(64, func(i int) bool { return i == 7 || i == 40 })
			if !(first == 7 && second == 40 || first == 40 && second == 7) {
				t.Fatalf("drew %d and %d, want 7 and 40, the only usable", first, second)
			}
		}
	})
	t.Run("one_usable_member_is_drawn_alone", func(t *testing.T) {
		if first, second := twoChoices(8, func(i int) bool { return i == 3 }); first != 3 || second != -1 {
			t.Errorf("drew %d and %d, want 3 and -1", first, second)
		}
		if first, second := twoChoices(1, func(int) bool { return true }); first != 0 || second != -1 {
			t.Errorf("from one member drew %d and %d, want 0 and -1", first, second)
		}
	})
	t.Run("none_usable", func(t *testing.T) {
		asked := 0
		if first, second := twoChoices(16, func(int) bool { asked++; return false }); first != -1 || second != -1 {
			t.Errorf("drew %d and %d, want none", first, second)
		}
		if asked > drawsBeforeScan+16 {
			t.Errorf("asked %d times, want at most %d draws and one scan", asked, drawsBeforeScan+16)
		}
	})
}

// newTestLeastLatency returns a least_latency policy with its estimates,
// outside any proxy.
func newTestLeastLatency(t testing.TB) *LeastLatency {
	ll := &LeastLatency{estimator: peakEWMA{decay: float64(defaultDecay), defaultRTT: defaultDefaultRTT}}
	table, err := takeEstimates(ll.estimator)
	if err != nil {
		t.Fatal(err)
	}
	ll.table = table
	t.Cleanup(func() { ll.Cleanup() })
	return ll
}

// measured records one round trip of rtt to each upstream, now.
func measured(ll *LeastLatency, upstreams reverseproxy.UpstreamPool, rtts ...time.Duration) {
	for i, rtt := range rtts {
		ll.table.observe(&ll.table.lookup(upstreams[i].Dial).estimate, rtt, clock())
	}
}

// selections counts the upstreams n selections choose, by dial address.
func selections(ll *LeastLatency, upstreams reverseproxy.UpstreamPool, r *http.Request, n int) map[string]int {
	counts := map[string]int{}
	for range n {
		if u := ll.Select(upstreams, r, nil); u != nil {
			counts[u.Dial]++
		}
	}
	return counts
}

func TestLeastLatencySelect(t *testing.T) {
	t.Run("a_slow_upstream_loses_every_draw", func(t *testing.T) {
		upstreams := upstreamsNamed("slow-a", "fast-b", "fast-c", "fast-d", "fast-e")
		ll := newTestLeastLatency(t)
		measured(ll, upstreams, 20*time.Millisecond, 200*time.Microsecond, 210*time.Microsecond, 190*time.Microsecond, 200*time.Microsecond)
		counts := selections(ll, upstreams, caddyRequest(""), 4000)
		if counts["slow-a:80"] != 0 {
			t.Errorf("the slow upstream got %d of 4000, want none", counts["slow-a:80"])
		}
		// A fast one wins against those slower than it: the 210 µs one only
		// against the slow one, in a tenth of the draws.
		if counts["fast-d:80"] < counts["fast-c:80"] || counts["fast-c:80"] < 300 {
			t.Errorf("selections %v: want the 190 µs upstream ahead of the 210 µs one, which still gets some", counts)
		}
	})
	t.Run("an_idle_unmeasured_upstream_is_probed", func(t *testing.T) {
		upstreams := upstreamsNamed("new-a", "known-b")
		ll := newTestLeastLatency(t)
		measured(ll, upstreams[1:], 100*time.Microsecond)
		if counts := selections(ll, upstreams, caddyRequest(""), 100); counts["new-a:80"] != 100 {
			t.Errorf("selections %v, want all 100 to the unmeasured upstream, with nothing in flight", counts)
		}
	})
	t.Run("consul_weights_divide_the_cost", func(t *testing.T) {
		upstreams := upstreamsNamed("w-a", "w-b", "w-c")
		ll := newTestLeastLatency(t)
		// b is 1.5 times slower than a, but has twice its weight; c has
		// weight 0.
		measured(ll, upstreams, 2*time.Millisecond, 3*time.Millisecond, time.Millisecond)
		r := caddyRequest("")
		pool.Attach(r, pool.NewSnapshot([]pool.Instance{{Dial: "w-a:80", Weight: 1}, {Dial: "w-b:80", Weight: 2}, {Dial: "w-c:80", Weight: 0}}))
		if counts := selections(ll, upstreams, r, 100); counts["w-b:80"] != 100 {
			t.Errorf("selections %v, want all 100 to b (cost 3/2 against a's 2/1, c never)", counts)
		}
	})
	t.Run("a_dropped_estimate_is_looked_up_again", func(t *testing.T) {
		upstreams := upstreamsNamed("gone-a", "gone-b")
		ll := newTestLeastLatency(t)
		ll.Select(upstreams, caddyRequest(""), nil) // builds the pool
		ll.table.mu.Lock()
		ll.table.sweep(clock() + ll.table.idleFor + time.Second)
		ll.table.mu.Unlock()
		measured(ll, upstreams, 50*time.Millisecond, time.Millisecond)
		if counts := selections(ll, upstreams, caddyRequest(""), 100); counts["gone-b:80"] != 100 {
			t.Errorf("selections %v, want all 100 to b, measured after the sweep", counts)
		}
	})
	t.Run("no_upstream_no_selection", func(t *testing.T) {
		ll := newTestLeastLatency(t)
		if u := ll.Select(nil, caddyRequest(""), nil); u != nil {
			t.Errorf("selected %s from no upstream", u.Dial)
		}
	})
}

func TestEstimatesAreSharedAndDropped(t *testing.T) {
	p := peakEWMA{decay: float64(time.Second), defaultRTT: time.Millisecond}
	first, _ := takeEstimates(p)
	defer releaseEstimates(p)
	second, _ := takeEstimates(p)
	defer releaseEstimates(p)
	if first != second {
		t.Fatal("two policies of one configuration got different tables")
	}
	if first.idleFor != time.Minute {
		t.Errorf("idle for %v with decay 1s, want the minimum of 1m", first.idleFor)
	}
	kept, stale := first.lookup("kept:80"), first.lookup("stale:80")
	now := clock()
	first.observe(&kept.estimate, time.Millisecond, now+2*time.Minute)
	first.mu.Lock()
	first.sweep(now + 2*time.Minute)
	first.mu.Unlock()
	if !stale.dropped.Load() || kept.dropped.Load() {
		t.Errorf("dropped: stale %v, kept %v; want only the estimate idle for 2m dropped", stale.dropped.Load(), kept.dropped.Load())
	}
	if first.lookup("kept:80") != kept || first.lookup("stale:80") == stale {
		t.Error("want the kept estimate found again and the stale one made anew")
	}
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 12, 1, 20, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		status int
		value  string
		want   time.Duration
	}{
		{http.StatusServiceUnavailable, "120", 2 * time.Minute},
		{http.StatusTooManyRequests, "Tue, 01 Dec 2026 20:00:30 GMT", 30 * time.Second},
		{http.StatusTooManyRequests, "Tue, 01 Dec 2026 19:00:00 GMT", 0},
		{http.StatusServiceUnavailable, "soon", 0},
		{http.StatusServiceUnavailable, "-5", 0},
		{http.StatusInternalServerError, "120", 0},
	} {
		res := &http.Response{StatusCode: tt.status, Header: http.Header{"Retry-After": {tt.value}}}
		if got := retryAfter(res, now); got != tt.want {
			t.Errorf("%d with Retry-After %q: %v, want %v", tt.status, tt.value, got, tt.want)
		}
	}
}
