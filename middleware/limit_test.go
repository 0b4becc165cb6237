package middleware

import (
	"context"
	"fmt"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddymesh/caddymesh/internal/meshtest"
)

// limitAt provisions l with its clock stopped at now.
func limitAt(t testing.TB, l *Limit, now time.Time) *Limit {
	provision(t, l)
	l.now = func() time.Time { return now }
	return l
}

// flood sends n requests through h from many goroutines at once and counts
// the answers by status.
func flood(h caddyhttp.MiddlewareHandler, n int, newRequest func(i int) *http.Request) map[int]int {
	var mu sync.Mutex
	counts := make(map[int]int)
	var wg sync.WaitGroup
	next := atomic.Int64{}
	for range 32 {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				a := serve(h, newRequest(i), ok)
				mu.Lock()
				counts[a.status]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return counts
}

func TestLimitAdmitsExactlyTheBurstThenTheRate(t *testing.T) {
	start := time.Now()
	l := limitAt(t, &Limit{Rate: "10/s", Burst: 20}, start)
	get := func(int) *http.Request { return request("GET", "/") }
	if got := flood(l, 1000, get); got[200] != 20 || got[429] != 980 {
		t.Fatalf("1000 requests at once: %v, want 20 admitted (the burst) and 980 refused 429", got)
	}
	l.now = func() time.Time { return start.Add(time.Second) }
	if got := flood(l, 1000, get); got[200] != 10 || got[429] != 990 {
		t.Fatalf("1000 requests a second later: %v, want 10 admitted (the rate) and 990 refused", got)
	}
}

func TestLimitKeysHaveBucketsOfTheirOwn(t *testing.T) {
	l := limitAt(t, &Limit{Key: "{http.request.header.X-Caller}", Rate: "5/s"}, time.Now())
	counts := flood(l, 3000, func(i int) *http.Request {
		r := request("GET", "/")
		r.Header.Set("X-Caller", "caller-"+strconv.Itoa(i%3))
		return r
	})
	if counts[200] != 15 {
		t.Errorf("three callers, 1000 requests each at once: %d admitted, want each caller's burst of 5", counts[200])
	}
}

func TestLimitRefusalSaysWhenToRetry(t *testing.T) {
	for _, tc := range []struct {
		rate, retryAfter string
	}{
		{"10/s", "1"},   // a tenth of a second, rounded up
		{"1/m", "60"},   // a minute
		{"2/5s", "3"},   // 2.5s
		{"30/h", "120"}, // two minutes
	} {
		l := limitAt(t, &Limit{Rate: tc.rate, Burst: 1}, time.Now())
		serve(l, request("GET", "/"), ok)
		a := serve(l, request("GET", "/"), ok)
		if a.status != http.StatusTooManyRequests || a.retryAfter != tc.retryAfter {
			t.Errorf("rate %s, second request: %d with Retry-After %q, want 429 with %q", tc.rate, a.status, a.retryAfter, tc.retryAfter)
		}
	}
}

// holder is a next handler that holds requests until released.
type holder struct {
	inside  atomic.Int32
	release chan struct{}
}

func newHolder() *holder { return &holder{release: make(chan struct{})} }

func (h *holder) ServeHTTP(w http.ResponseWriter, _ *http.Request) error {
	h.inside.Add(1)
	<-h.release
	w.WriteHeader(http.StatusOK)
	return nil
}

// sendAll sends n requests through l to next concurrently; their answers
// arrive on the channel returned.
func sendAll(l *Limit, next caddyhttp.Handler, n int, newRequest func() *http.Request) <-chan answer {
	answers := make(chan answer, n)
	for range n {
		go func() { answers <- serve(l, newRequest(), next) }()
	}
	return answers
}

// waitFor waits until cond holds, with meshtest's one Eventually.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	meshtest.Eventually(t, 10*time.Second, what, cond)
}

func TestLimitQueuesBeyondConcurrencyAndRefusesBeyondTheQueue(t *testing.T) {
	l := limitAt(t, &Limit{Concurrency: 2, Queue: 3, QueueTimeout: caddy.Duration(time.Minute)}, time.Now())
	held := newHolder()
	answers := sendAll(l, held, 10, func() *http.Request { return request("GET", "/") })
	for range 5 {
		if a := <-answers; a.status != http.StatusServiceUnavailable || a.err == nil || !strings.Contains(a.err.Error(), "queue full") || a.retryAfter != "60" {
			t.Fatalf("a request beyond concurrency and queue: %d %v Retry-After %q, want 503 queue full with Retry-After 60", a.status, a.err, a.retryAfter)
		}
	}
	waitFor(t, "two requests inside", func() bool { return held.inside.Load() == 2 })
	bucket := l.buckets.acquire(request("GET", "/"), time.Now())
	defer bucket.Release()
	waitFor(t, "three queued requests", func() bool { return bucket.Value.waiting.Load() == 3 })
	close(held.release)
	for range 5 {
		if a := <-answers; a.status != http.StatusOK {
			t.Errorf("an admitted or queued request: %d %v, want 200", a.status, a.err)
		}
	}
	if inside := held.inside.Load(); inside != 5 {
		t.Errorf("%d requests reached the handler, want 5: two at once, then the three queued", inside)
	}
}

func TestLimitConcurrencyIsExactUnderLoad(t *testing.T) {
	l := limitAt(t, &Limit{Concurrency: 7}, time.Now())
	var inFlight, peak atomic.Int32
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error {
		n := inFlight.Add(1)
		for old := peak.Load(); n > old && !peak.CompareAndSwap(old, n); old = peak.Load() {
		}
		runtime.Gosched()
		inFlight.Add(-1)
		return nil
	})
	var wg sync.WaitGroup
	var admitted, refused atomic.Int32
	for range 64 {
		wg.Go(func() {
			for range 200 {
				if a := serve(l, request("GET", "/"), next); a.status == http.StatusServiceUnavailable {
					refused.Add(1)
				} else {
					admitted.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if peak.Load() != 7 {
		t.Errorf("peak in flight %d, want exactly the concurrency of 7", peak.Load())
	}
	if admitted.Load()+refused.Load() != 64*200 || refused.Load() == 0 {
		t.Errorf("%d admitted and %d refused of %d", admitted.Load(), refused.Load(), 64*200)
	}
}

func TestLimitQueueTimesOut(t *testing.T) {
	l := limitAt(t, &Limit{Concurrency: 1, Queue: 1, QueueTimeout: caddy.Duration(20 * time.Millisecond)}, time.Now())
	held := newHolder()
	defer close(held.release)
	sendAll(l, held, 1, func() *http.Request { return request("GET", "/") })
	waitFor(t, "the first request inside", func() bool { return held.inside.Load() == 1 })
	a := serve(l, request("GET", "/"), held)
	if a.status != http.StatusServiceUnavailable || !strings.Contains(fmt.Sprint(a.err), "queued too long") || a.retryAfter != "1" {
		t.Errorf("queued past queue_timeout: %d %v Retry-After %q, want 503 queued too long with Retry-After 1", a.status, a.err, a.retryAfter)
	}
}

func TestLimitClientLeavingTheQueueFreesItsPlace(t *testing.T) {
	l := limitAt(t, &Limit{Concurrency: 1, Queue: 1, QueueTimeout: caddy.Duration(time.Hour)}, time.Now())
	held := newHolder()
	defer close(held.release)
	sendAll(l, held, 1, func() *http.Request { return request("GET", "/") })
	waitFor(t, "the first request inside", func() bool { return held.inside.Load() == 1 })

	ctx, leave := context.WithCancel(context.Background())
	queued := sendAll(l, held, 1, func() *http.Request { return request("GET", "/").WithContext(ctx) })
	bucket := l.buckets.acquire(request("GET", "/"), time.Now())
	defer bucket.Release()
	waitFor(t, "the second request queued", func() bool { return bucket.Value.waiting.Load() == 1 })
	leave()
	if a := <-queued; a.status != 499 {
		t.Errorf("a queued client that left: %d %v, want 499", a.status, a.err)
	}
	if waiting := bucket.Value.waiting.Load(); waiting != 0 {
		t.Errorf("%d still queued after the client left, want its place free", waiting)
	}
	sendAll(l, held, 1, func() *http.Request { return request("GET", "/") })
	waitFor(t, "a third request queued in the freed place", func() bool { return bucket.Value.waiting.Load() == 1 })
}

// TestLimitMemoryIsBoundedUnderAFloodOfKeys sends a million requests, each
// with a key of its own, and checks that the keys kept, and the memory
// they take, stay bounded: the oldest idle keys make way.
func TestLimitMemoryIsBoundedUnderAFloodOfKeys(t *testing.T) {
	l := limitAt(t, &Limit{Key: "{http.request.header.X-Caller}", Rate: "10/s", Concurrency: 8}, time.Now())
	before := heapInUse()
	counts := flood(l, 1_000_000, func(i int) *http.Request {
		r := request("GET", "/")
		r.Header.Set("X-Caller", strconv.Itoa(i))
		return r
	})
	if counts[200] != 1_000_000 {
		t.Errorf("a million callers, one request each: %v, want every one admitted", counts)
	}
	if keys := l.buckets.store.Len(); keys > maxLimitKeys {
		t.Errorf("%d keys kept, want at most %d", keys, maxLimitKeys)
	}
	const bound = 64 << 20
	grown := heapInUse() - before
	t.Logf("the heap grew by %d MiB for %d keys kept", grown>>20, l.buckets.store.Len())
	if grown > bound {
		t.Errorf("the heap grew by %d MiB, want under %d MiB", grown>>20, bound>>20)
	}
	l.buckets.store.Sweep(time.Now().Add(time.Hour))
	if keys := l.buckets.store.Len(); keys != 0 {
		t.Errorf("%d keys left after they were all idle for an hour, want 0", keys)
	}
}

func heapInUse() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse)
}

func TestLimitRejectsBadSettings(t *testing.T) {
	for _, tc := range []struct {
		limit Limit
		want  string
	}{
		{Limit{}, "set a rate, a concurrency, or both"},
		{Limit{Rate: "100"}, `rate "100": want requests per unit of time`},
		{Limit{Rate: "-1/s"}, `rate "-1/s"`},
		{Limit{Rate: "0/s"}, `rate "0/s"`},
		{Limit{Rate: "5/fortnight"}, `rate "5/fortnight": unknown unit of time "fortnight"`},
		{Limit{Rate: "5/-1s"}, `unknown unit of time "-1s"`},
		{Limit{Rate: "1/25h"}, `rate "1/25h": must be from 1/24h to 1000000000/s`},
		{Limit{Rate: "0.0000001/2000000h"}, `rate "0.0000001/2000000h": must be from 1/24h`},
		{Limit{Rate: "2000000000/s"}, `rate "2000000000/s": must be from 1/24h to 1000000000/s`},
		{Limit{Rate: "5/s", Burst: -1}, "burst -1: must be from 1 to 1000000000"},
		{Limit{Rate: "5/s", Burst: 1_000_000_001}, "burst 1000000001: must be from 1 to 1000000000"},
		{Limit{Concurrency: -2}, "concurrency -2: must be from 1 to 1000000"},
		{Limit{Concurrency: 1, Queue: -1}, "queue -1: must be from 0 to 1000000"},
		{Limit{Rate: "5/s", Queue: 3}, "queue 3: needs a concurrency"},
		{Limit{Concurrency: 1, Queue: 1, QueueTimeout: -1}, "queue_timeout -1ns: must be from 1ms to 1h0m0s"},
		{Limit{Concurrency: 1, Queue: 1, QueueTimeout: caddy.Duration(2 * time.Hour)}, "queue_timeout 2h0m0s: must be from 1ms to 1h0m0s"},
		{Limit{Concurrency: 1, QueueTimeout: caddy.Duration(time.Second)}, "queue_timeout 1s: needs a queue to wait in"},
	} {
		err := tc.limit.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want one saying %q", tc.limit, err, tc.want)
		}
	}
}

func TestParseRate(t *testing.T) {
	for spec, want := range map[string]float64{
		"100/s": 100, "6000/m": 100, "36/h": 0.01, "5/100ms": 50, "1.5/s": 1.5, "": 0,
	} {
		got, err := parseRate(spec)
		if err != nil || float64(got) != want {
			t.Errorf("parseRate(%q) = %v, %v; want %v per second", spec, got, err, want)
		}
	}
}
