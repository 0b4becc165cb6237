package discovery

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
}

// seen is one request the fake received.
type seen struct {
	index, token, wait string
}

// fakeConsul answers health queries from a script; past its end, it holds
// every request open, as Consul does when nothing changes.
type fakeConsul struct {
	t      *testing.T
	srv    *httptest.Server
	mu     sync.Mutex
	script []reply
	seen   []seen
	always *reply        // when set, answers every request past the script
	gate   chan struct{} // when set, each scripted answer waits for step
}

func newFakeConsul(t *testing.T, script ...reply) *fakeConsul {
	f := &fakeConsul{t: t, script: script}
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
	if !strings.HasPrefix(r.URL.Path, "/v1/health/service/") {
		http.NotFound(w, r)
		return
	}
	f.mu.Lock()
	n := len(f.seen)
	f.seen = append(f.seen, seen{index: r.URL.Query().Get("index"), token: r.Header.Get("X-Consul-Token"), wait: r.URL.Query().Get("wait")})
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
func (f *fakeConsul) watch(token string) (*watcher, *observer.ObservedLogs) {
	key := watchKey{
		endpoint: endpoint{address: f.srv.URL}, service: "web",
		health: healthPassing, consistency: consistencyStale, wait: time.Second,
	}
	w, err := newWatcher(key, connection{endpoint: key.endpoint, token: token})
	if err != nil {
		f.t.Fatal(err)
	}
	core, logs := observer.New(zap.DebugLevel)
	w.logger = func() *zap.Logger { return zap.New(core) }
	w.distrustEmpty = 300 * time.Millisecond
	w.start()
	f.t.Cleanup(func() { w.Destruct() })
	return w, logs
}

// healthyIDs returns the IDs of the watcher's current healthy instances.
func healthyIDs(w *watcher) []string {
	a := w.current.Load()
	if a == nil {
		return nil
	}
	ids := []string{}
	for _, inst := range a.healthy.Instances {
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
	first := w.current.Load()
	f.step()
	if w.current.Load() != first {
		t.Error("an answer with the same instances replaced the snapshot")
	}
	f.step()
	latest := w.current.Load()
	if got := healthyIDs(w); strings.Join(got, ",") != "a,b,c" {
		t.Fatalf("healthy = %v, want a,b,c", got)
	}
	if latest.healthy.Version == first.healthy.Version {
		t.Error("a real change kept the old version")
	}
	if latest.all != latest.healthy {
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
		if got := nextIndex(tt.previous, tt.returned); got != tt.want {
			t.Errorf("nextIndex(%d, %d) = %d, want %d", tt.previous, tt.returned, got, tt.want)
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
	if status := w.status.Load(); status.staleness() <= 0 || status.err == "" {
		t.Errorf("during the outage: staleness %s, error %q; want both reported", status.staleness(), status.err)
	}
	f.awaitRequests(7)
	if status := w.status.Load(); status.staleness() != 0 || status.err != "" || status.index != 50 {
		t.Errorf("after the outage: staleness %s, error %q, index %d; want 0, none, 50", status.staleness(), status.err, status.index)
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

func TestWatcherBacksOffOnErrors(t *testing.T) {
	f := newFakeConsul(t)
	f.always = &reply{status: http.StatusInternalServerError}
	f.watch("")
	time.Sleep(time.Second)
	// Backoff pauses are at least 25, 50, 100, 200, 400 ms...: at most 6
	// queries fit in a second. Without backoff the rate limit would allow 11.
	if n := len(f.requests()); n > 6 {
		t.Errorf("%d queries in 1s against a failing Consul, want at most 6", n)
	}
}

func TestWatcherRateLimitsChurn(t *testing.T) {
	f := newFakeConsul(t)
	f.always = &reply{index: 1, instances: []string{"a"}} // a new index on every answer
	f.watch("")
	time.Sleep(time.Second)
	// A burst of 2, then one query per 100ms.
	if n := len(f.requests()); n > 2+10+1 {
		t.Errorf("%d queries in 1s against a churning Consul, want at most 13", n)
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
		if n := countLogs(logs, "right after an outage"); n != 1 {
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
			a := w.current.Load()
			return a != nil && len(a.healthy.Instances) == 0
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

func TestWatcherGoroutineEndsWithDestruct(t *testing.T) {
	const loop = "discovery.(*poller[...]).run"
	before := meshtest.Goroutines(loop)
	f := newFakeConsul(t, reply{index: 10, instances: []string{"a"}})
	w, _ := f.watch("")
	f.awaitRequests(2) // now blocked in a query
	if n := meshtest.Goroutines(loop); n != before+1 {
		t.Fatalf("%d watch loops running, want %d", n, before+1)
	}
	w.Destruct()
	if n := meshtest.Goroutines(loop); n != before {
		t.Errorf("%d watch loops after Destruct, want %d", n, before)
	}
}
