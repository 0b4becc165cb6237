package lbpolicy_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddymesh/caddymesh"
	"github.com/caddymesh/caddymesh/internal/consultest"
	"github.com/caddymesh/caddymesh/internal/meshtest"
)

// These tests run Caddy in-process with real backends on loopback, and a
// real Consul agent for the weights Consul gives.

var agent *consultest.Agent

func TestMain(m *testing.M) { consultest.Main(m, &agent) }

// serve loads a config with one site on a free port whose body is site,
// and returns the site's URL.
func serve(t *testing.T, site string) string { return meshtest.Serve(t, agent.Addr, site) }

// sequence sends n requests one after another and spells who answered.
func sequence(url string, n int, header ...string) string {
	var out []string
	for range n {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		if len(header) == 2 {
			req.Header.Set(header[0], header[1])
		}
		resp, err := meshtest.Client.Do(req)
		if err != nil {
			out = append(out, "error")
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		out = append(out, string(body))
	}
	return strings.Join(out, " ")
}

func TestNginxSequenceThroughCaddy(t *testing.T) {
	a, b, c := meshtest.StartBackend(t, "a"), meshtest.StartBackend(t, "b"), meshtest.StartBackend(t, "c")
	url := serve(t, fmt.Sprintf(`reverse_proxy %s %s %s {
		lb_policy smooth_weighted {
			weight %s 5
			weight %s 1 %s 1
		}
	}`, a.Addr(), b.Addr(), c.Addr(), a.Addr(), b.Addr(), c.Addr()))
	if got, want := sequence(url, 14), "a a b a c a a a a b a c a a"; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}

func TestConsulWeightsShapeTraffic(t *testing.T) {
	for name, weight := range map[string]int{"a": 5, "b": 1, "c": 1} {
		backend := meshtest.StartBackend(t, name)
		agent.Register(t, consultest.Instance{Service: "weighted", ID: "weighted-" + name, Port: backend.Port(),
			Weights: &api.AgentWeights{Passing: weight, Warning: 1}})
	}
	url := serve(t, `reverse_proxy {
		dynamic consul weighted
		lb_policy smooth_weighted
	}`)
	counts := map[string]int{}
	for _, name := range strings.Fields(sequence(url, 70)) {
		counts[name]++
	}
	if counts["a"] != 50 || counts["b"] != 10 || counts["c"] != 10 {
		t.Errorf("70 requests went %v, want exactly a:50 b:10 c:10 (Consul weights 5, 1, 1)", counts)
	}
}

func TestSameKeySameBackendUntilItStops(t *testing.T) {
	backends := map[string]*meshtest.Backend{}
	var addrs []string
	for _, name := range []string{"a", "b", "c", "d"} {
		backends[name] = meshtest.StartBackend(t, name)
		addrs = append(addrs, backends[name].Addr())
	}
	url := serve(t, fmt.Sprintf(`reverse_proxy %s {
		lb_policy consistent_hash {http.request.header.X-User}
		lb_retries 3
		fail_duration 30s
	}`, strings.Join(addrs, " ")))

	home := map[string]string{}
	for i := range 40 {
		user := fmt.Sprintf("user-%d", i)
		got := sequence(url, 5, "X-User", user)
		first := strings.Fields(got)[0]
		if got != strings.TrimSpace(strings.Repeat(first+" ", 5)) {
			t.Fatalf("%s reached %s, want one backend", user, got)
		}
		home[user] = first
	}
	stopped := home["user-0"]
	backends[stopped].Close()
	for user, before := range home {
		got := strings.Fields(sequence(url, 3, "X-User", user))
		for _, now := range got {
			switch {
			case now == "error" || now == "":
				t.Errorf("%s failed after %s stopped", user, stopped)
			case before == stopped && now == stopped:
				t.Errorf("%s still reached the stopped %s", user, stopped)
			case before != stopped && now != before:
				t.Errorf("%s moved from %s to %s, though only %s stopped", user, before, now, stopped)
			}
		}
		if before == stopped && (got[0] != got[1] || got[1] != got[2]) {
			t.Errorf("%s moved to %v: not one backend", user, got)
		}
	}
}

// slowBackend holds each request for a while and records the most it held
// at once.
type slowBackend struct {
	inFlight, peak atomic.Int64
	srv            *httptest.Server
}

func startSlowBackend(t *testing.T, hold time.Duration) *slowBackend {
	b := &slowBackend{}
	b.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		n := b.inFlight.Add(1)
		for peak := b.peak.Load(); n > peak && !b.peak.CompareAndSwap(peak, n); peak = b.peak.Load() {
		}
		time.Sleep(hold)
		b.inFlight.Add(-1)
	}))
	t.Cleanup(b.srv.Close)
	return b
}

func TestBoundedLoadSpreadsAHotKey(t *testing.T) {
	const upstreams, clients = 4, 16
	run := func(t *testing.T, policyOptions string) []int64 {
		var backends []*slowBackend
		var addrs []string
		for range upstreams {
			b := startSlowBackend(t, 100*time.Millisecond)
			backends = append(backends, b)
			addrs = append(addrs, b.srv.Listener.Addr().String())
		}
		url := serve(t, fmt.Sprintf(`reverse_proxy %s {
		lb_policy consistent_hash {http.request.header.X-Key} {
			%s
		}
	}`, strings.Join(addrs, " "), policyOptions))
		var wg sync.WaitGroup
		for range clients {
			wg.Go(func() { sequence(url, 5, "X-Key", "the-hot-key") })
		}
		wg.Wait()
		peaks := make([]int64, upstreams)
		for i, b := range backends {
			peaks[i] = b.peak.Load()
		}
		return peaks
	}
	t.Run("without_a_bound_the_hot_key_loads_one_upstream", func(t *testing.T) {
		peaks := run(t, "points 1024")
		if max := maxOf(peaks); max != clients {
			t.Errorf("peaks %v: want one upstream holding all %d requests", peaks, clients)
		}
	})
	t.Run("bounded_load_1.25_caps_every_upstream", func(t *testing.T) {
		peaks := run(t, "bounded_load 1.25")
		// 16 in flight over 4 upstreams: a cap of ceil(1.25 × 16 / 4) = 5.
		// The policy reads the in-flight counts Caddy keeps, which count a
		// request a few microseconds after its selection: the 16 clients
		// start at once, so selections racing in that window may each admit
		// one more than the cap.
		if max := maxOf(peaks); max > 5+1 {
			t.Errorf("peaks %v: want none above the cap 5, plus one for racing selections", peaks)
		}
	})
}

func maxOf(values []int64) int64 {
	m := values[0]
	for _, v := range values[1:] {
		m = max(m, v)
	}
	return m
}

func TestAsFallbackOfAnotherPolicy(t *testing.T) {
	a, b := meshtest.StartBackend(t, "a"), meshtest.StartBackend(t, "b")
	for policy, want := range map[string]string{
		"smooth_weighted": "a b a b",
		"consistent_hash": "",
	} {
		t.Run(policy, func(t *testing.T) {
			// Caddy's header policy calls its fallback with a nil ResponseWriter.
			url := serve(t, fmt.Sprintf(`reverse_proxy %s %s {
		lb_policy header X-Absent {
			fallback %s
		}
	}`, a.Addr(), b.Addr(), policy))
			got := sequence(url, 4)
			if strings.Contains(got, "error") || (want != "" && got != want) {
				t.Errorf("got %s, want %s", got, cmpOr(want, "four answers"))
			}
		})
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// In a pool larger than pool.PreselectAbove, the consul source hands Caddy
// only the candidates the policy names; the traffic is the same as from
// the whole pool: Consul's weights exactly, a key on its instance, and a
// dead instance skipped by retries.
func TestLargePoolThroughCaddy(t *testing.T) {
	const n = 24
	backends := map[string]*meshtest.Backend{}
	weights := map[string]int{}
	cycle := 0
	for i := range n {
		name := fmt.Sprintf("large-%d", i)
		backends[name], weights[name] = meshtest.StartBackend(t, name), i%4+1
		cycle += weights[name]
		agent.Register(t, consultest.Instance{Service: "large", ID: name, Port: backends[name].Port(),
			Weights: &api.AgentWeights{Passing: weights[name], Warning: 1}})
	}
	url := serve(t, `handle /weighted/* {
		reverse_proxy {
			dynamic consul large
			lb_policy smooth_weighted
			lb_retries 2
			fail_duration 10s
		}
	}
	handle /hashed/* {
		reverse_proxy {
			dynamic consul large
			lb_policy consistent_hash {http.request.uri}
		}
	}`)

	counts := map[string]int{}
	for _, name := range strings.Fields(sequence(url+"weighted/", 2*cycle)) {
		counts[name]++
	}
	for name, weight := range weights {
		if counts[name] != 2*weight {
			t.Errorf("%s (weight %d) answered %d of two cycles' %d requests, want %d", name, weight, counts[name], 2*cycle, 2*weight)
		}
	}

	owners := map[string]bool{}
	for key := range 30 {
		answers := strings.Fields(sequence(fmt.Sprintf("%shashed/%d", url, key), 3))
		if answers[0] != answers[1] || answers[1] != answers[2] {
			t.Errorf("key %d went to %v", key, answers)
		}
		owners[answers[0]] = true
	}
	if len(owners) < 10 {
		t.Errorf("30 keys went to %d instances of %d", len(owners), n)
	}

	backends["large-5"].Close() // dead, but passing in Consul
	answers := strings.Fields(sequence(url+"weighted/", cycle))
	for _, name := range answers {
		if !strings.HasPrefix(name, "large-") || name == "large-5" {
			t.Fatalf("with large-5 dead, a request got %q", name)
		}
	}
	if len(answers) != cycle {
		t.Errorf("with large-5 dead, %d of %d requests were answered by an instance", len(answers), cycle)
	}
}

// When none of a request's candidates is available, the request gets a
// 503, or with lb_retries a retry over the whole pool, which finds the
// one instance left.
func TestLargePoolWithFewCandidatesLeft(t *testing.T) {
	alive := meshtest.StartBackend(t, "alive")
	agent.Register(t, consultest.Instance{Service: "lastone", ID: "lastone-alive", Port: alive.Port()})
	for i := range 23 { // nothing listens on their ports
		agent.Register(t, consultest.Instance{Service: "lastone", ID: fmt.Sprintf("lastone-dead-%d", i), Port: meshtest.FreePort()})
	}
	url := serve(t, `handle /retries/* {
		reverse_proxy {
			dynamic consul lastone
			lb_policy smooth_weighted
			lb_retries 1
			fail_duration 1m
		}
	}
	handle /once/* {
		reverse_proxy {
			dynamic consul lastone
			lb_policy smooth_weighted
			fail_duration 1m
		}
	}`)
	meshtest.Eventually(t, 5*time.Second, "the alive instance is routed", func() bool {
		sequence(url+"retries/", 24)
		return alive.Hits.Load() > 0
	})
	sequence(url+"retries/", 100) // every dead instance fails once, and is skipped from then on

	if got := strings.Fields(sequence(url+"retries/", 60)); len(got) != 60 || slices.ContainsFunc(got, func(s string) bool { return s != "alive" }) {
		t.Errorf("with lb_retries 1, 60 requests got %v, want alive each time", got)
	}
	answers := map[int]int{}
	for range 60 {
		status, _ := meshtest.Get(url + "once/")
		answers[status]++
	}
	if answers[http.StatusOK] == 0 || answers[http.StatusServiceUnavailable] == 0 || answers[http.StatusOK]+answers[http.StatusServiceUnavailable] != 60 {
		t.Errorf("with no retries, statuses %v, want 200s (the alive one among the candidates) and 503s (not)", answers)
	}
}
