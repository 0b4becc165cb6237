package consul

import (
	"cmp"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddymesh/caddymesh/internal/consultest"
	"github.com/caddymesh/caddymesh/internal/meshtest"
)

// The tests in this file inject faults a real Consul agent cannot produce
// on demand (an index going backwards, 500s, hangs) with a fake of the one
// endpoint a watcher uses. The behaviour on a real agent is tested in
// e2e_test.go.

// reply is one scripted answer of the fake health endpoint.
type reply struct {
	status    int      // default 200
	index     uint64   // X-Consul-Index
	instances []string // IDs of passing instances, each on port 80 of 10.0.0.<n>
	hang      bool     // never answer: hold the request until the client gives up
	noLeader  bool     // X-Consul-KnownLeader: false
}

// seen is one request the fake received.
type seen struct {
	index, token, wait string
	stale              bool
	at                 time.Time // on the watcher's clock, when it has a fake one
}

// fakeConsul answers health queries from a script; past its end, it holds
// every request open, as Consul does when nothing changes.
type fakeConsul struct {
	t      *testing.T
	srv    *httptest.Server
	mu     sync.Mutex
	script []reply
	seen   []seen
	always *reply            // when set, answers every request past the script
	gate   chan struct{}     // when set, each scripted answer waits for step
	leader string            // what /v1/status/leader answers
	clock  *consultest.Clock // the watcher's, when set
}

func newFakeConsul(t *testing.T, script ...reply) *fakeConsul {
	f := &fakeConsul{t: t, script: script, leader: "127.0.0.1:8300"}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

// newGatedFakeConsul returns a fake whose scripted answers wait for step,
// so that a test sees every state the watcher passes through.
func newGatedFakeConsul(t *testing.T, script ...reply) *fakeConsul {
	f := newFakeConsul(t, script...)
	f.gate = make(chan struct{})
	return f
}

// step lets the next scripted answer go, and waits until the watcher has
// processed it, which it has when its next request arrives.
func (f *fakeConsul) step() {
	f.t.Helper()
	n := len(f.requests())
	f.gate <- struct{}{}
	f.awaitRequests(n + 1)
}

func (f *fakeConsul) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/v1/status/leader" {
		f.mu.Lock()
		leader := f.leader
		f.mu.Unlock()
		json.NewEncoder(w).Encode(leader)
		return
	}
	if !strings.HasPrefix(r.URL.Path, "/v1/health/service/") {
		http.NotFound(w, r)
		return
	}
	f.mu.Lock()
	n := len(f.seen)
	s := seen{index: r.URL.Query().Get("index"), token: r.Header.Get("X-Consul-Token"), wait: r.URL.Query().Get("wait"), stale: r.URL.Query().Has("stale")}
	if f.clock != nil {
		s.at = f.clock.Now()
	}
	f.seen = append(f.seen, s)
	var rep reply
	switch {
	case n < len(f.script):
		rep = f.script[n]
	case f.always != nil:
		rep = *f.always
		rep.index += uint64(n)
	default:
		rep.hang = true
	}
	f.mu.Unlock()
	if f.gate != nil && n < len(f.script) {
		select {
		case <-f.gate:
		case <-r.Context().Done():
			return
		}
	}
	if rep.hang {
		<-r.Context().Done()
		return
	}
	if rep.status != 0 && rep.status != http.StatusOK {
		http.Error(w, "injected failure", rep.status)
		return
	}
	w.Header().Set("X-Consul-Index", strconv.FormatUint(rep.index, 10))
	w.Header().Set("X-Consul-KnownLeader", strconv.FormatBool(!rep.noLeader))
	w.Header().Set("X-Consul-LastContact", "0")
	json.NewEncoder(w).Encode(entriesOf(rep.instances))
}

func entriesOf(ids []string) []*api.ServiceEntry {
	entries := make([]*api.ServiceEntry, 0, len(ids))
	for i, id := range ids {
		entries = append(entries, &api.ServiceEntry{
			Node:    &api.Node{Node: "node"},
			Service: &api.AgentService{ID: id, Service: "web", Address: "10.0.0." + strconv.Itoa(i+1), Port: 80},
			Checks:  api.HealthChecks{{CheckID: "c", Status: api.HealthPassing}},
		})
	}
	return entries
}

// requests returns what the fake has received so far.
func (f *fakeConsul) requests() []seen {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]seen(nil), f.seen...)
}

// awaitRequests waits until the fake has received n requests.
func (f *fakeConsul) awaitRequests(n int) {
	f.t.Helper()
	meshtest.Eventually(f.t, 15*time.Second, strconv.Itoa(n)+" requests", func() bool { return len(f.requests()) >= n })
}

// watch starts a watcher of service web on the fake, logging into the
// returned observer.
func (f *fakeConsul) watch(token string) (*HealthWatch, *observer.ObservedLogs) {
	return f.watchWith(token, 0, nil)
}

// watchWith starts a watcher of service web on the fake with hold_last
// holdLast and, when c is set, c as its clock.
func (f *fakeConsul) watchWith(token string, holdLast time.Duration, c *consultest.Clock) (*HealthWatch, *observer.ObservedLogs) {
	return f.watchPaced(token, holdLast, c, nil)
}

// watchPaced starts a watcher as watchWith does, with limiter l unless it
// is nil.
func (f *fakeConsul) watchPaced(token string, holdLast time.Duration, c *consultest.Clock, l Limiter) (*HealthWatch, *observer.ObservedLogs) {
	key := HealthKey{
		Endpoint: Endpoint{Address: f.srv.URL}, Service: "web",
		Health: HealthPassing, Consistency: ConsistencyStale, Wait: time.Second, HoldLast: holdLast,
	}
	core, logs := observer.New(zap.DebugLevel)
	opts := PollerOptions{Logger: func() *zap.Logger { return zap.New(core) }, Distrust: 300 * time.Millisecond, Limiter: l}
	if c != nil {
		f.clock, opts.Clock = c, c
	}
	w, err := NewHealthWatch(key, Connection{Endpoint: key.Endpoint, token: token}, opts)
	if err != nil {
		f.t.Fatal(err)
	}
	if err := w.Start(); err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(w.Stop)
	return w, logs
}

// healthyIDs returns the IDs of the watcher's current healthy instances.
func healthyIDs(w *HealthWatch) []string {
	a := w.Current()
	if a == nil {
		return nil
	}
	ids := []string{}
	for _, inst := range a.Healthy.Instances {
		ids = append(ids, inst.ID)
	}
	return ids
}

func countLogs(logs *observer.ObservedLogs, message string) int {
	return logs.FilterMessageSnippet(message).Len()
}

func TestWatcherPublishesOnlyRealChanges(t *testing.T) {
	f := newGatedFakeConsul(t,
		reply{index: 10, instances: []string{"a", "b"}},
		reply{index: 11, instances: []string{"a", "b"}}, // index moved, content did not
		reply{index: 12, instances: []string{"a", "b", "c"}},
	)
	w, _ := f.watch("")
	f.awaitRequests(1)
	f.step()
	first := w.Current()
	f.step()
	if w.Current() != first {
		t.Error("an answer with the same instances replaced the snapshot")
	}
	f.step()
	latest := w.Current()
	if got := healthyIDs(w); strings.Join(got, ",") != "a,b,c" {
		t.Fatalf("healthy = %v, want a,b,c", got)
	}
	if latest.Healthy.Version == first.Healthy.Version {
		t.Error("a real change kept the old version")
	}
	if latest.All != latest.Healthy {
		t.Error("when every instance is healthy, all and healthy must be one snapshot")
	}
}

func TestWatcherIndexHandling(t *testing.T) {
	f := newFakeConsul(t,
		reply{index: 10, instances: []string{"a"}},
		reply{index: 5, instances: []string{"a"}}, // went backwards: start over
		reply{index: 0, instances: []string{"a"}}, // zero: never send below 1
		reply{index: 7, instances: []string{"a"}},
	)
	f.watch("")
	f.awaitRequests(5)
	var indexes []string
	for _, r := range f.requests()[:5] {
		indexes = append(indexes, cmp.Or(r.index, "none"))
	}
	if got, want := strings.Join(indexes, " "), "none 10 none 1 7"; got != want {
		t.Errorf("indexes sent = %s, want %s", got, want)
	}
	if wait := f.requests()[1].wait; wait != "1000ms" {
		t.Errorf("wait sent = %q, want the configured 1s", wait)
	}
}

func TestNextIndex(t *testing.T) {
	tests := []struct{ previous, returned, want uint64 }{
		{0, 42, 42},
		{42, 43, 43},
		{42, 42, 42},
		{42, 7, 0}, // backwards
		{0, 0, 1},  // never below 1
	}
	for _, tt := range tests {
		if got := NextIndex(tt.previous, tt.returned); got != tt.want {
			t.Errorf("NextIndex(%d, %d) = %d, want %d", tt.previous, tt.returned, got, tt.want)
		}
	}
}

func TestWatcherServesLastGoodSetThroughErrors(t *testing.T) {
	failure := reply{status: http.StatusInternalServerError}
	f := newFakeConsul(t,
		reply{index: 10, instances: []string{"a", "b"}},
		failure, failure, failure, failure,
		reply{index: 50, instances: []string{"a", "b", "c"}},
	)
	w, logs := f.watch("")
	f.awaitRequests(4)
	if got := healthyIDs(w); strings.Join(got, ",") != "a,b" {
		t.Errorf("during the outage healthy = %v, want the last good a,b", got)
	}
	if status := w.Status(); status.Staleness(time.Now(), w.LeaderState()) <= 0 || status.Err == "" {
		t.Errorf("during the outage: staleness %s, error %q; want both reported", status.Staleness(time.Now(), w.LeaderState()), status.Err)
	}
	f.awaitRequests(7)
	meshtest.Eventually(t, 5*time.Second, "the leader check has found the leader", func() bool { return w.LeaderState().Known })
	if status := w.Status(); status.Staleness(time.Now(), w.LeaderState()) != 0 || status.Err != "" || status.Index != 50 {
		t.Errorf("after the outage: staleness %s, error %q, index %d; want 0, none, 50", status.Staleness(time.Now(), w.LeaderState()), status.Err, status.Index)
	}
	if got := healthyIDs(w); strings.Join(got, ",") != "a,b,c" {
		t.Errorf("after the outage healthy = %v, want a,b,c", got)
	}
	if n := countLogs(logs, "consul query failed"); n != 1 {
		t.Errorf("outage logged %d times, want once", n)
	}
	if n := countLogs(logs, "consul answers again"); n != 1 {
		t.Errorf("recovery logged %d times, want once", n)
	}
	if index := f.requests()[5].index; index != "" {
		t.Errorf("first query after failures sent index %s, want none (start over)", index)
	}
}

// countingLimiter is a Limiter that records every reservation, and
// delays each by delay, or by the wrapped limiter's when it has one.
type countingLimiter struct {
	mu      sync.Mutex
	wrapped Limiter
	delay   time.Duration
	delays  []time.Duration
}

func (l *countingLimiter) Reserve(now time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	d := l.delay
	if l.wrapped != nil {
		d = l.wrapped.Reserve(now)
	}
	l.delays = append(l.delays, d)
	return d
}

func (l *countingLimiter) reserved() []time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]time.Duration(nil), l.delays...)
}

func TestWatcherBacksOffOnErrors(t *testing.T) {
	const failures = 8
	failure := reply{status: http.StatusInternalServerError}
	script := make([]reply, failures)
	for i := range script {
		script[i] = failure
	}
	f := newFakeConsul(t, script...) // then hangs
	c, limiter := consultest.NewClock(true), &countingLimiter{}
	f.watchPaced("", 0, c, limiter)
	f.awaitRequests(failures + 1)
	// The limiter never delays, so every sleep is a backoff: one after
	// each failure, the k-th from half of min(50ms·2^(k-1), 2s) up to all
	// of it; and the next query comes after exactly that sleep.
	// (A slow run may see the hanging query time out too: only the
	// scripted failures are checked.)
	sleeps, requests := c.Sleeps(), f.requests()
	if len(sleeps) < failures || len(sleeps) >= len(requests) {
		t.Fatalf("the watcher slept %d times over %d failures and %d queries, want once after each failure: %v", len(sleeps), failures, len(requests), sleeps)
	}
	for k := 1; k <= failures; k++ {
		full := min(RetryBase<<(k-1), RetryMax)
		if sleeps[k-1] < full/2 || sleeps[k-1] >= full {
			t.Errorf("after failure %d the watcher backed off %s, want from %s to under %s", k, sleeps[k-1], full/2, full)
		}
		if gap := requests[k].at.Sub(requests[k-1].at); gap != sleeps[k-1] {
			t.Errorf("query %d came %s after the one before, want its backoff, %s", k+1, gap, sleeps[k-1])
		}
	}
	if n := len(limiter.reserved()); n < len(requests) || n > len(requests)+1 {
		t.Errorf("the limiter was asked %d times for %d queries, want once per query", n, len(requests))
	}
}

func TestWatcherRateLimitsChurn(t *testing.T) {
	const answers = 12
	var script []reply
	for i := range answers {
		script = append(script, reply{index: uint64(10 + i), instances: []string{"a"}}) // a new index every time
	}
	f := newFakeConsul(t, script...) // then hangs
	c, limiter := consultest.NewClock(true), &countingLimiter{wrapped: NewLimiter()}
	f.watchPaced("", 0, c, limiter)
	f.awaitRequests(answers + 1)
	// A burst of 2, then one query per interval, never fewer, never more:
	// each query took its turn from the limiter, and waited what it said.
	requests, reserved := f.requests(), limiter.reserved()
	if len(reserved) < len(requests) || len(reserved) > len(requests)+1 { // the next may be taken already
		t.Fatalf("%d turns taken from the limiter for %d queries, want one per query", len(reserved), len(requests))
	}
	for k := 1; k < len(requests); k++ {
		gap := requests[k].at.Sub(requests[k-1].at)
		want := QueryInterval
		if k < QueryBurst {
			want = 0
		}
		if gap < want-time.Millisecond || gap > want+time.Millisecond {
			t.Errorf("query %d came %s after the one before, want %s", k+1, gap, want)
		}
		if gap != reserved[k] {
			t.Errorf("query %d came %s after the one before, want the limiter's %s", k+1, gap, reserved[k])
		}
	}
}

func TestWatcherDistrustsEmptyAnswerAfterOutage(t *testing.T) {
	t.Run("held until instances come back", func(t *testing.T) {
		f := newGatedFakeConsul(t,
			reply{index: 10, instances: []string{"a"}},
			reply{status: http.StatusInternalServerError},
			reply{index: 3}, // a restarted, empty agent
			reply{index: 4, instances: []string{"b"}},
		)
		w, logs := f.watch("")
		f.awaitRequests(1)
		f.step()
		f.step()
		f.step()
		if got := healthyIDs(w); strings.Join(got, ",") != "a" {
			t.Errorf("right after the outage healthy = %v, want the last good a", got)
		}
		f.step()
		if got := healthyIDs(w); strings.Join(got, ",") != "b" {
			t.Errorf("healthy = %v, want b as soon as it is registered", got)
		}
		if n := countLogs(logs, "older index"); n != 1 {
			t.Errorf("holding logged %d times, want once", n)
		}
	})
	t.Run("believed once the grace has passed", func(t *testing.T) {
		f := newFakeConsul(t,
			reply{index: 10, instances: []string{"a"}},
			reply{status: http.StatusInternalServerError},
			reply{index: 3},
		)
		f.always = &reply{index: 3} // still empty
		w, _ := f.watch("")
		meshtest.Eventually(t, 5*time.Second, "the empty answer is believed", func() bool {
			a := w.Current()
			return a != nil && len(a.Healthy.Instances) == 0
		})
		held := f.requests()[3] // the query right after the empty answer was held back
		ms, err := strconv.Atoi(strings.TrimSuffix(held.wait, "ms"))
		if err != nil || ms <= 0 || ms > 300 {
			t.Errorf("query while holding waited %q, want a blocking wait no longer than the 300ms grace", held.wait)
		}
	})
}

func TestWatcherSurvivesHangingConsul(t *testing.T) {
	f := newFakeConsul(t,
		reply{index: 10, instances: []string{"a"}},
		reply{hang: true}, // held past wait + wait/16: the client must give up
		reply{index: 11, instances: []string{"b"}},
	)
	w, logs := f.watch("")
	f.awaitRequests(2)
	if got := healthyIDs(w); strings.Join(got, ",") != "a" {
		t.Errorf("while Consul hangs healthy = %v, want a", got)
	}
	f.awaitRequests(4)
	if got := healthyIDs(w); strings.Join(got, ",") != "b" {
		t.Errorf("after the hang healthy = %v, want b", got)
	}
	if n := countLogs(logs, "consul query failed"); n != 1 {
		t.Errorf("hang logged %d times, want once", n)
	}
}

func TestWatcherSendsTokenButNeverLogsIt(t *testing.T) {
	const token = "b1c2d3e4-secret-token"
	f := newFakeConsul(t, reply{status: http.StatusForbidden}, reply{index: 5, instances: []string{"a"}})
	w, logs := f.watch(token)
	f.awaitRequests(3)
	for _, r := range f.requests() {
		if r.token != token {
			t.Errorf("request carried token %q, want the configured one", r.token)
		}
	}
	if len(healthyIDs(w)) != 1 {
		t.Error("watcher did not recover after the 403")
	}
	for _, entry := range logs.All() {
		if strings.Contains(entry.Message, token) {
			t.Errorf("log message reveals the token: %s", entry.Message)
		}
		for k, v := range entry.ContextMap() {
			if s, ok := v.(string); ok && strings.Contains(s, token) {
				t.Errorf("log field %s reveals the token: %s", k, s)
			}
		}
	}
}

func TestWatcherWarnsOnceAboutAnUnknownService(t *testing.T) {
	f := newGatedFakeConsul(t,
		reply{index: 5}, // no instance at all: a misspelt service, say
		reply{index: 6},
		reply{index: 7, instances: []string{"a"}},
		reply{index: 8},
	)
	_, logs := f.watch("")
	f.awaitRequests(1)
	f.step()
	f.step()
	if n := countLogs(logs, "no instance of this service"); n != 1 {
		t.Errorf("two empty answers logged %d warnings, want 1", n)
	}
	f.step()
	f.step()
	if n := countLogs(logs, "no instance of this service"); n != 2 {
		t.Errorf("empty again after instances: %d warnings in all, want 2", n)
	}
}

func TestWatcherGoroutineEndsWithStop(t *testing.T) {
	const loop = PollLoop
	before := meshtest.Goroutines(loop)
	f := newFakeConsul(t, reply{index: 10, instances: []string{"a"}})
	w, _ := f.watch("")
	f.awaitRequests(2) // now blocked in a query
	if n := meshtest.Goroutines(loop); n != before+1 {
		t.Fatalf("%d watch loops running, want %d", n, before+1)
	}
	w.Stop()
	if n := meshtest.Goroutines(loop); n != before {
		t.Errorf("%d watch loops after Stop, want %d", n, before)
	}
}

func TestWatcherDoesNotRollBackAfterAnOutage(t *testing.T) {
	failure := reply{status: http.StatusInternalServerError}
	t.Run("an older answer waits for the leader's", func(t *testing.T) {
		f := newGatedFakeConsul(t,
			reply{index: 10242, instances: []string{"a", "b"}},
			failure,
			reply{index: 7993, instances: []string{"old"}},          // a server replaying its log
			reply{index: 10250, instances: []string{"a", "b", "c"}}, // the leader
		)
		w, logs := f.watch("")
		f.awaitRequests(1)
		f.step()
		f.step()
		f.step()
		if got := strings.Join(healthyIDs(w), ","); got != "a,b" {
			t.Errorf("after an older answer healthy = %s, want what was served, a,b", got)
		}
		leader := f.requests()[3]
		if leader.stale || leader.index != "" {
			t.Errorf("the query after the older answer: stale %v, index %q; want the leader, at once", leader.stale, leader.index)
		}
		f.step()
		if got := strings.Join(healthyIDs(w), ","); got != "a,b,c" {
			t.Errorf("after the leader's answer healthy = %s, want a,b,c", got)
		}
		if !f.requests()[4].stale {
			t.Error("after the leader's answer the watch still asks the leader, want stale queries again")
		}
		if n := countLogs(logs, "older index"); n != 1 {
			t.Errorf("older answer logged %d times, want once", n)
		}
	})
	t.Run("believed once the distrust has passed", func(t *testing.T) {
		c := consultest.NewClock(false)
		f := newGatedFakeConsul(t,
			reply{index: 100, instances: []string{"a"}},
			failure,
			reply{index: 50, instances: []string{"old"}},
			failure, // the leader does not answer
			reply{index: 51, instances: []string{"old"}},
		)
		w, _ := f.watchWith("", 0, c)
		f.awaitRequests(1)
		f.step()
		f.step() // recovered at c's time: distrust for 300ms
		c.Add(299 * time.Millisecond)
		f.step()
		f.step()
		if got := strings.Join(healthyIDs(w), ","); got != "a" {
			t.Errorf("within the distrust healthy = %s, want a", got)
		}
		c.Add(time.Millisecond)
		f.step() // the leader answers
		if got := strings.Join(healthyIDs(w), ","); got != "old" {
			t.Errorf("from the leader healthy = %s, want old", got)
		}
	})
}

func TestWatcherHoldsTheLastInstancesWhenAllGoAtOnce(t *testing.T) {
	const holdLast = 10 * time.Second
	c := consultest.NewClock(false)
	f := newGatedFakeConsul(t,
		reply{index: 10, instances: []string{"a", "b"}},
		reply{index: 11}, // the agent they registered through left
		reply{index: 12},
		reply{index: 13},
		reply{index: 14, instances: []string{"c"}},
		reply{index: 15},
	)
	w, logs := f.watchWith("", holdLast, c)
	f.awaitRequests(1)
	f.step()
	f.step()
	if got := strings.Join(healthyIDs(w), ","); got != "a,b" || !w.Current().Held() {
		t.Fatalf("after all went at once: healthy %s, holding %v; want a,b held", got, w.Current().HeldUntil)
	}
	if until := w.Current().HeldUntil; !until.Equal(c.Now().Add(holdLast)) {
		t.Errorf("held until %s, want hold_last from now, %s", until, c.Now().Add(holdLast))
	}
	c.Add(holdLast - time.Millisecond)
	f.step()
	if got := strings.Join(healthyIDs(w), ","); got != "a,b" {
		t.Errorf("just before hold_last healthy = %s, want a,b still", got)
	}
	if wait := f.requests()[3].wait; wait != "1ms" {
		t.Errorf("query 1ms before the hold ends waited %s, want 1ms: the rest of the hold", wait)
	}
	c.Add(time.Millisecond)
	f.step()
	if got := healthyIDs(w); len(got) != 0 || w.Current().Held() {
		t.Errorf("at hold_last healthy = %v, holding %v; want the empty answer believed", got, w.Current().HeldUntil)
	}
	f.step()
	f.step()
	if got := healthyIDs(w); len(got) != 1 || !w.Current().Held() {
		t.Errorf("c alone went: healthy %v, holding %v; want c held", got, w.Current().HeldUntil)
	}
	if n := countLogs(logs, "all at once"); n != 2 {
		t.Errorf("holds logged %d times, want 2", n)
	}
}

func TestWatcherHoldLastOffBelievesEmptyAnswers(t *testing.T) {
	f := newGatedFakeConsul(t, reply{index: 10, instances: []string{"a"}}, reply{index: 11})
	w, _ := f.watch("")
	f.awaitRequests(1)
	f.step()
	f.step()
	if got := healthyIDs(w); len(got) != 0 || w.Current().Held() {
		t.Errorf("hold_last 0: healthy %v, holding %v; want the empty answer believed", got, w.Current().HeldUntil)
	}
}

func TestStaleness(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	answered := Status{SyncedAt: t0, ConfirmedAt: t0, AnswerLeader: true}
	stale := answered
	stale.LastContact = 40 * time.Millisecond
	failing := answered
	failing.Err, failing.ConfirmedAt = "connection refused", at(20*time.Second)
	noLeaderEver := Status{SyncedAt: t0}
	tests := []struct {
		name   string
		status Status
		leader LeaderState
		now    time.Time
		want   time.Duration
	}{
		{"nothing answered yet", Status{}, LeaderState{}, at(time.Minute), 0},
		{"a blocking query in flight with a leader is current", answered,
			LeaderState{Checked: at(50 * time.Second), Known: true, LastFound: at(50 * time.Second)}, at(time.Minute), 0},
		{"plus the server's last contact in stale mode", stale,
			LeaderState{Checked: at(50 * time.Second), Known: true, LastFound: at(50 * time.Second)}, at(time.Minute), 40 * time.Millisecond},
		{"without a leader, since the leader was last found", answered,
			LeaderState{Checked: at(50 * time.Second), LastFound: at(40 * time.Second)}, at(time.Minute), 20 * time.Second},
		{"without a leader since before the answer, since the answer", answered,
			LeaderState{Checked: at(50 * time.Second)}, at(time.Minute), time.Minute},
		{"failing, since Consul last confirmed, not since it last answered", failing,
			LeaderState{Checked: at(50 * time.Second), Known: true, LastFound: at(50 * time.Second)}, at(time.Minute), 40 * time.Second},
		{"answered but never with a leader, since the answer", noLeaderEver,
			LeaderState{Checked: at(time.Second)}, at(time.Minute), time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.status.Staleness(tt.now, &tt.leader); got != tt.want {
				t.Errorf("staleness = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestWatcherSeesNoLeaderWhileBlocking(t *testing.T) {
	f := newFakeConsul(t, reply{index: 10, instances: []string{"a"}, noLeader: true}) // then blocks
	f.leader = ""
	w, _ := f.watch("")
	f.awaitRequests(2)
	meshtest.Eventually(t, 5*time.Second, "the leader check has run", func() bool { return !w.LeaderState().Checked.IsZero() })
	status := w.Status()
	if status.KnownLeader(w.LeaderState()) {
		t.Error("known_leader is true without a leader")
	}
	if d := status.Staleness(time.Now().Add(time.Minute), w.LeaderState()); d < time.Minute {
		t.Errorf("a minute on without a leader, staleness %s, want at least a minute", d)
	}
}
