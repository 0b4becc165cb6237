package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"time"

	"github.com/caddymesh/caddymesh/internal/consultest"
	"github.com/caddymesh/caddymesh/internal/loadgen"
)

// The tail-latency experiment (-tail): five backends, one of them slow,
// behind each of Caddy's latency-aware and plain policies and caddymesh's.
// Each setup gets the same open-loop load, -rate requests a second for
// -duration, on varied URIs; reported are the latencies from each
// request's scheduled time and the share of requests the slow backend got.

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
}

// runTail runs the tail-latency experiment and prints its table.
func runTail(agent *consultest.Agent) {
	b, stop := startSlowAndFast(agent)
	defer stop()
	var urls []string
	for i := range 1000 {
		urls = append(urls, fmt.Sprintf("/item/%d", i))
	}
	fmt.Printf("%d backends, the first %s slower; open loop, %d requests/s for %s per setup; proxy alone on core 0\n\n",
		tailBackends, *slowness, *rate, *duration)
	fmt.Println("| setup | requests | failed | p50 | p99 | p99.9 | share to the slow backend |")
	fmt.Println("|-------|---------:|-------:|----:|----:|------:|--------------------------:|")
	for _, s := range tailSetups {
		result, err := measureTail(s, b, urls)
		if err != nil {
			log.Fatalf("%s: %v", s.name, err)
		}
		q := result.Quantiles()
		fmt.Printf("| %s | %d | %d | %s | %s | %s | %.1f%% |\n", s.name, result.Sent, result.Failed,
			q[0], q[1], q[2], 100*float64(result.ByBody["tail-0"])/float64(max(result.Sent, 1)))
	}
}

// measureTail starts the proxy of s, warms it up, and sends it the load.
func measureTail(s setup, b bench, paths []string) (loadgen.Result, error) {
	port, err := freePort()
	if err != nil {
		return loadgen.Result{}, err
	}
	proxy, err := startProxy(s, port, b)
	if err != nil {
		return loadgen.Result{}, err
	}
	defer proxy.stop()
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	if err := awaitOK(base+"/", 15*time.Second); err != nil {
		return loadgen.Result{}, fmt.Errorf("%v; log: %s", err, proxy.logTail())
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
	load := loadgen.Start(client, *rate, urls...)
	time.Sleep(*duration)
	return load.Stop(), nil
}

// startSlowAndFast starts the experiment's backends, each answering its
// name (tail-0 after a pause of -slow), registered in Consul as the
// instances of service tail.
func startSlowAndFast(agent *consultest.Agent) (bench, func()) {
	return startBackends(agent, "tail", tailBackends, func(i int) http.Handler {
		name := fmt.Sprintf("tail-%d", i)
		pause := time.Duration(0)
		if i == 0 {
			pause = *slowness
		}
		return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			time.Sleep(pause)
			io.WriteString(w, name)
		})
	})
}
