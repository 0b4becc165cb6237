package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/caddymesh/caddymesh/internal/consultest"
	"github.com/caddymesh/caddymesh/internal/loadgen"
)

// The tail-latency experiment (-tail): five backends, one of them slow,
// behind each of Caddy's latency-aware and plain policies and caddymesh's.
// Each setup gets the same open-loop load, -rate requests a second for
// -duration, on varied URIs; reported are the latencies from each
// request's scheduled time and the share of requests the slow backend got,
// then the same with all five fast. Two more scenarios follow: a backend
// that turns slow for 10s mid-run, and one that answers 503 at once.

var (
	tail     = flag.Bool("tail", false, "run the tail-latency experiment (one slow backend among five) instead")
	slowness = flag.Duration("slow", 20*time.Millisecond, "with -tail: what the slow backend adds to each answer")
	rate     = flag.Int("rate", 1000, "with -tail: requests a second, open loop")
)

// tailBackends is the number of backends; the first is the slow one.
const tailBackends = 5

var tailSetups = []setup{
	{"Caddy `round_robin`", "caddy", func(port int, b bench) string { return caddyStatic(port, b, "round_robin") }},
	{"Caddy `least_conn`", "caddy", func(port int, b bench) string { return caddyStatic(port, b, "least_conn") }},
	{"Caddy `random_choose 2`", "caddy", func(port int, b bench) string { return caddyStatic(port, b, "random_choose 2") }},
	{"caddymesh `smooth_weighted`", "caddy", func(port int, b bench) string { return caddyConsul(port, b, "smooth_weighted") }},
	{"caddymesh `consistent_hash`", "caddy", func(port int, b bench) string {
		return caddyConsul(port, b, "consistent_hash {http.request.uri}")
	}},
	{"caddymesh `consistent_hash` + `bounded_load 1.25`", "caddy", func(port int, b bench) string {
		return caddyConsul(port, b, "consistent_hash {http.request.uri} {\n\t\t\tbounded_load 1.25\n\t\t}")
	}},
	leastLatency,
}

var (
	leastLatency = setup{"caddymesh `least_latency`", "caddy", func(port int, b bench) string { return caddyConsul(port, b, "least_latency") }}
	roundRobin   = tailSetups[0]
	leastConn    = tailSetups[1]
)

// runTail runs the tail-latency experiment and prints its tables.
func runTail(agent *consultest.Agent) {
	var paths []string
	for i := range 1000 {
		paths = append(paths, fmt.Sprintf("/item/%d", i))
	}
	fmt.Printf("%d backends, the first %s slower; open loop, %d requests/s for %s per setup; proxy alone on core 0\n\n",
		tailBackends, *slowness, *rate, *duration)
	fmt.Println("| setup | requests | failed | p50 | p99 | p99.9 | share to the slow backend |")
	fmt.Println("|-------|---------:|-------:|----:|----:|------:|--------------------------:|")
	b, stop := startBackendsPausing(agent, "tail", func(i int) time.Duration { return pauseIf(i == 0, *slowness) })
	for _, s := range tailSetups {
		printTailRow(s.name, measureTail(s, b, paths, *duration, nil), "tail-0")
	}
	stop()
	fast, stop := startBackendsPausing(agent, "tail-fast", func(int) time.Duration { return 0 })
	for _, s := range []setup{roundRobin, leastLatency} {
		printTailRow(s.name+", all five fast", measureTail(s, fast, paths, *duration, nil), "tail-fast-0")
	}
	stop()
	runDegrading(agent, paths)
	runFastFailure(agent, paths)
}

// printTailRow prints a row of the tail-latency table.
func printTailRow(name string, result loadgen.Result, slow string) {
	q := result.Quantiles()
	fmt.Printf("| %s | %d | %d | %s | %s | %s | %.2f%% |\n", name, result.Sent, result.Failed,
		q[0], q[1], q[2], 100*float64(result.ByBody[slow])/float64(max(result.Sent, 1)))
}

func pauseIf(slow bool, pause time.Duration) time.Duration {
	if slow {
		return pause
	}
	return 0
}

// The degrading backend: fast for degradeAfter, then -slow slower for
// degradeFor, then fast again until degradeRun.
const (
	degradeAfter = 10 * time.Second
	degradeFor   = 10 * time.Second
	degradeRun   = 70 * time.Second
)

// runDegrading measures how fast policies move traffic off a backend that
// turns slow mid-run, and back once it recovers.
func runDegrading(agent *consultest.Agent, paths []string) {
	var slow atomic.Bool
	b, stop := startBackendsPausing(agent, "degrade", func(i int) time.Duration { return pauseIf(i == 0 && slow.Load(), *slowness) })
	defer stop()
	fmt.Printf("\nThe first of %d backends %s slower from %s to %s of a %s run; shares in windows of %s\n\n",
		tailBackends, *slowness, degradeAfter, degradeAfter+degradeFor, degradeRun, shareWindow)
	fmt.Println("| setup | share before | share while slow | below 2% after the slowdown, after | back to 10% after recovery, after | share in the last 10s |")
	fmt.Println("|-------|-------------:|-----------------:|-------------------------:|----------------------------------------:|----------------------:|")
	for _, s := range []setup{leastLatency, leastConn, roundRobin} {
		slow.Store(false)
		result := measureTail(s, b, paths, degradeRun, func() {
			time.AfterFunc(degradeAfter, func() { slow.Store(true) })
			time.AfterFunc(degradeAfter+degradeFor, func() { slow.Store(false) })
		})
		t := newTimeline(result, "degrade-0")
		fmt.Printf("| %s | %.1f%% | %.1f%% | %s | %s | %.1f%% |\n", s.name,
			100*t.share(0, degradeAfter), 100*t.share(degradeAfter, degradeAfter+degradeFor),
			t.firstWindow(degradeAfter, degradeAfter+degradeFor, func(share float64) bool { return share < 0.02 }),
			t.firstWindow(degradeAfter+degradeFor, degradeRun, func(share float64) bool { return share >= 0.10 }),
			100*t.share(degradeRun-10*time.Second, degradeRun))
	}
}

// shareWindow is the width of the windows in which shares are counted.
const shareWindow = 500 * time.Millisecond

// timeline is the answers of a run by window, for one backend.
type timeline struct{ all, backend []int }

func newTimeline(result loadgen.Result, backend string) timeline {
	var t timeline
	for _, a := range result.Answers {
		w := int(a.Due / shareWindow)
		for len(t.all) <= w {
			t.all, t.backend = append(t.all, 0), append(t.backend, 0)
		}
		t.all[w]++
		if a.Body == backend {
			t.backend[w]++
		}
	}
	return t
}

// share returns the backend's share of the answers due from from to to.
func (t timeline) share(from, to time.Duration) float64 {
	all, backend := 0, 0
	for w := int(from / shareWindow); w < min(int(to/shareWindow), len(t.all)); w++ {
		all, backend = all+t.all[w], backend+t.backend[w]
	}
	return float64(backend) / float64(max(all, 1))
}

// firstWindow returns how long after from the first window before to ends
// in which the backend's share satisfies ok, or "never".
func (t timeline) firstWindow(from, to time.Duration, ok func(share float64) bool) string {
	for w := int(from / shareWindow); w < min(int(to/shareWindow), len(t.all)); w++ {
		if start := time.Duration(w) * shareWindow; ok(t.share(start, start+shareWindow)) {
			return (start + shareWindow - from).String()
		}
	}
	return "never"
}

// runFastFailure measures the share of requests that go to a backend
// answering 503 at once.
func runFastFailure(agent *consultest.Agent, paths []string) {
	b, stop := startBackends(agent, "failing", tailBackends, func(i int) http.Handler {
		name := fmt.Sprintf("failing-%d", i)
		return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			if i == 0 {
				w.WriteHeader(http.StatusServiceUnavailable)
			}
			io.WriteString(w, name)
		})
	})
	defer stop()
	fmt.Printf("\nThe first of %d backends answers 503 at once; open loop, %d requests/s for %s per setup\n\n", tailBackends, *rate, *duration)
	fmt.Println("| setup | requests | answered 503 (share to the failing backend) | unanswered | p99 |")
	fmt.Println("|-------|---------:|---------------------------------------------:|-----------:|----:|")
	for _, s := range []setup{leastLatency, leastConn, roundRobin} {
		result := measureTail(s, b, paths, *duration, nil)
		fmt.Printf("| %s | %d | %.2f%% | %d | %s |\n", s.name, result.Sent,
			100*float64(result.Failed-result.Unanswered)/float64(max(result.Sent, 1)), result.Unanswered, result.Quantiles()[1])
	}
}

// measureTail starts the proxy of s, warms it up, and sends it the load
// for d, calling started (when not nil) as the load starts.
func measureTail(s setup, b bench, paths []string, d time.Duration, started func()) loadgen.Result {
	port, err := freePort()
	if err != nil {
		log.Fatal(err)
	}
	proxy, err := startProxy(s, port, b)
	if err != nil {
		log.Fatalf("%s: %v", s.name, err)
	}
	defer proxy.stop()
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	if err := awaitOK(base+"/", 15*time.Second); err != nil {
		log.Fatalf("%s: %v; log: %s", s.name, err, proxy.logTail())
	}
	urls := make([]string, len(paths))
	for i, p := range paths {
		urls[i] = base + p
	}
	transport := &http.Transport{MaxIdleConnsPerHost: 1024}
	defer transport.CloseIdleConnections()
	client := &http.Client{Timeout: 10 * time.Second, Transport: transport}
	warmUp := loadgen.Start(client, *rate, urls...)
	time.Sleep(2 * time.Second)
	warmUp.Stop()
	if started != nil {
		started()
	}
	load := loadgen.Start(client, *rate, urls...)
	time.Sleep(d)
	return load.Stop()
}

// startBackendsPausing starts the experiment's backends, the i-th
// answering its name after pause(i), asked per request, registered in
// Consul as the instances of service.
func startBackendsPausing(agent *consultest.Agent, service string, pause func(i int) time.Duration) (bench, func()) {
	return startBackends(agent, service, tailBackends, func(i int) http.Handler {
		name := fmt.Sprintf("%s-%d", service, i)
		return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			time.Sleep(pause(i))
			io.WriteString(w, name)
		})
	})
}
