// Command proxybench measures reverse proxies side by side, in one run, on
// the same backends: stock Caddy, Caddy with caddymesh, nginx and HAProxy,
// at several numbers of upstreams, and prints a Markdown table.
//
// Method: the proxy runs alone on core 0 (taskset; GOMAXPROCS=1, one nginx
// worker, one HAProxy thread); this program, its backends, the Consul agent
// and the load generator (wrk) share core 1. Keep-alive is on to clients and
// to upstreams everywhere. Each setup gets a warm-up, then -reps runs, and
// the median is reported. The figure that matters is the proxy's CPU time
// per request, read from /proc: it stays right when the generator's core
// saturates, where requests per second and latency measure the machine as a
// whole. A run during which the hypervisor stole more than 5% of core 0
// (the noisy neighbours of a shared virtual machine) is run again, up to
// five times.
//
// With -tail, it runs the tail-latency experiment of tail.go instead.
//
// Run it with `make bench-proxies`, which builds ./caddy and installs nginx,
// HAProxy and wrk from Debian, and runs both.
package main

import (
	"cmp"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/caddymesh/caddymesh/internal/consultest"
)

// setup is a proxy configuration under test.
type setup struct {
	name   string
	proxy  string // caddy, nginx or haproxy
	config func(port int, b bench) string
}

// bench is what a setup proxies to: backends, also registered in Consul as
// the instances of service.
type bench struct {
	upstreams []string // host:port
	service   string
	consul    string
}

var setups = []setup{
	{"Caddy `round_robin`", "caddy", func(port int, b bench) string { return caddyStatic(port, b, "round_robin") }},
	{"Caddy `uri_hash`", "caddy", func(port int, b bench) string { return caddyStatic(port, b, "uri_hash") }},
	{"caddymesh `dynamic consul` + `smooth_weighted`", "caddy", func(port int, b bench) string { return caddyConsul(port, b, "smooth_weighted") }},
	{"caddymesh `dynamic consul` + `consistent_hash`", "caddy", func(port int, b bench) string {
		return caddyConsul(port, b, "consistent_hash {http.request.uri}")
	}},
	{"nginx weighted round robin", "nginx", func(port int, b bench) string { return nginx(port, b, "") }},
	{"nginx `hash $request_uri consistent`", "nginx", func(port int, b bench) string { return nginx(port, b, "hash $request_uri consistent;") }},
	{"HAProxy `balance roundrobin`", "haproxy", func(port int, b bench) string { return haproxy(port, b, "balance roundrobin") }},
	{"HAProxy `balance uri` + `hash-type consistent`", "haproxy", func(port int, b bench) string {
		return haproxy(port, b, "balance uri\n\thash-type consistent")
	}},
}

var (
	caddyBinary = flag.String("caddy", "./caddy", "the Caddy binary with caddymesh")
	sizes       = flag.String("upstreams", "4,64,256", "numbers of upstreams, comma-separated")
	reps        = flag.Int("reps", 3, "measured runs per setup")
	duration    = flag.Duration("duration", 5*time.Second, "length of a run")
	connections = flag.Int("connections", 32, "client connections")
	only        = flag.String("only", "", "run only the setups whose name contains this")
	workDir     = flag.String("work", ".work/proxybench", "where configs and logs go")
)

func main() {
	flag.Parse()
	log.SetFlags(0)
	if err := os.MkdirAll(*workDir, 0o755); err != nil {
		log.Fatal(err)
	}
	agent, err := consultest.Start(consultest.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer agent.Stop()
	if *tail {
		runTail(agent)
		return
	}

	var rows []row
	for _, field := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(field)
		if err != nil {
			log.Fatalf("-upstreams: %q is not a number", field)
		}
		b, stop := startBackends(agent, fmt.Sprintf("bench-%d", n), n, func(int) http.Handler { return answerOK })
		measured, err := measureSize(b)
		stop()
		if err != nil {
			log.Fatalf("%d upstreams: %v", n, err)
		}
		rows = append(rows, measured...)
	}
	printTable(os.Stdout, rows)
}

// startBackends starts n backends on loopback, the i-th with handler(i),
// and registers them in Consul as the instances of service, with IDs
// <service>-<i>.
func startBackends(agent *consultest.Agent, service string, n int, handler func(i int) http.Handler) (bench, func()) {
	b := bench{service: service, consul: agent.Addr}
	var servers []*http.Server
	for i := range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			log.Fatal(err)
		}
		srv := &http.Server{Handler: handler(i)}
		go srv.Serve(ln)
		servers = append(servers, srv)
		port := ln.Addr().(*net.TCPAddr).Port
		b.upstreams = append(b.upstreams, ln.Addr().String())
		err = agent.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{
			ID: fmt.Sprintf("%s-%d", b.service, i), Name: b.service, Address: "127.0.0.1", Port: port,
		})
		if err != nil {
			log.Fatal(err)
		}
	}
	return b, func() {
		for i, srv := range servers {
			srv.Close()
			agent.Client.Agent().ServiceDeregister(fmt.Sprintf("%s-%d", b.service, i))
		}
	}
}

// answerOK answers every request with "ok".
var answerOK = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })

// row is a setup's result: medians of its runs.
type row struct {
	setup         string
	upstreams     int
	cpuPerRequest float64 // µs of the proxy's CPU time
	ratio         float64 // median, over the rounds, of cpuPerRequest / Caddy round_robin's in the same round
	rps           float64
	latency       [2]time.Duration // see latencyColumns
	runs          int              // measured, noisy ones included
	loadAverage   string
}

// target is a setup's proxy, running.
type target struct {
	setup
	proxy *proxyProcess
	url   string
	runs  []run
	tries int
}

// measureSize starts the proxy of every setup selected, warms each up, and
// measures them in rounds, each setup once per round, so that the drift
// of a shared machine affects all alike: each setup's ratio to the first
// (Caddy round_robin) is the median of its ratios within a round.
func measureSize(b bench) ([]row, error) {
	var targets []*target
	defer func() {
		for _, t := range targets {
			t.proxy.stop()
		}
	}()
	for _, s := range setups {
		if !strings.Contains(s.name, *only) {
			continue
		}
		t, err := startTarget(s, b)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", s.name, err)
		}
		targets = append(targets, t)
	}
	loadAvg := loadAverage()
	for round := range *reps {
		for _, t := range targets {
			if err := t.measure(); err != nil {
				return nil, fmt.Errorf("%s: %v", t.name, err)
			}
			log.Printf("%d upstreams, round %d, %s: %.1f µs/request, %.0f req/s",
				len(b.upstreams), round+1, t.name, t.runs[round].cpuPerRequest, t.runs[round].load.rps)
		}
	}
	rows := make([]row, len(targets))
	for i, t := range targets {
		rows[i] = row{
			setup: t.name, upstreams: len(b.upstreams), runs: t.tries, loadAverage: loadAvg,
			cpuPerRequest: median(t.runs, func(x run) float64 { return x.cpuPerRequest }),
			rps:           median(t.runs, func(x run) float64 { return x.load.rps }),
			latency: [2]time.Duration{
				time.Duration(median(t.runs, func(x run) float64 { return float64(x.load.latency[0]) })),
				time.Duration(median(t.runs, func(x run) float64 { return float64(x.load.latency[1]) })),
			},
		}
		ratios := make([]float64, *reps)
		for round := range ratios {
			ratios[round] = t.runs[round].cpuPerRequest / targets[0].runs[round].cpuPerRequest
		}
		slices.Sort(ratios)
		rows[i].ratio = ratios[len(ratios)/2]
	}
	return rows, nil
}

// startTarget starts the proxy of s and warms it up.
func startTarget(s setup, b bench) (*target, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	proxy, err := startProxy(s, port, b)
	if err != nil {
		return nil, err
	}
	t := &target{setup: s, proxy: proxy, url: fmt.Sprintf("http://127.0.0.1:%d/", port)}
	if err := awaitOK(t.url, 15*time.Second); err != nil {
		proxy.stop()
		return nil, fmt.Errorf("%v; log: %s", err, proxy.logTail())
	}
	if _, err := runLoad(t.url, 2*time.Second); err != nil { // warm-up
		proxy.stop()
		return nil, err
	}
	return t, nil
}

// measure adds a run, retrying those during which the hypervisor stole
// more than 5% of core 0, up to five tries; after that, it keeps the least
// disturbed one.
func (t *target) measure() error {
	var best run
	for try := range 5 {
		t.tries++
		result, err := measureRun(t.proxy.pid(), t.url)
		if err != nil {
			return err
		}
		if try == 0 || result.stolenShare < best.stolenShare {
			best = result
		}
		if result.stolenShare <= 0.05 {
			break
		}
		log.Printf("  discarded a run: the hypervisor stole %.0f%% of core 0", 100*result.stolenShare)
		time.Sleep(time.Second)
	}
	t.runs = append(t.runs, best)
	return nil
}

// run is one measured run.
type run struct {
	load          loadResult
	cpuPerRequest float64 // µs
	stolenShare   float64 // of core 0's time, by the hypervisor
}

// measureRun runs the load once, reading the proxy's CPU time and core 0's
// stolen time before and after.
func measureRun(pid int, url string) (run, error) {
	procBefore, err := processCPU(pid)
	if err != nil {
		return run{}, err
	}
	coreBefore, err := coreCPU(0)
	if err != nil {
		return run{}, err
	}
	load, err := runLoad(url, *duration)
	if err != nil {
		return run{}, err
	}
	procAfter, _ := processCPU(pid)
	coreAfter, _ := coreCPU(0)
	return run{
		load:          load,
		cpuPerRequest: float64(procAfter-procBefore) / clockTicks * 1e6 / float64(load.requests),
		stolenShare:   float64(coreAfter.steal-coreBefore.steal) / float64(max(coreAfter.total-coreBefore.total, 1)),
	}, nil
}

// awaitOK waits until url answers 200, in the clients' protocol.
func awaitOK(url string, timeout time.Duration) error {
	client := http.DefaultClient
	if *h2 {
		var protocols http.Protocols
		protocols.SetUnencryptedHTTP2(true)
		client = &http.Client{Transport: &http.Transport{Protocols: &protocols}}
	}
	deadline := time.Now().Add(timeout)
	for {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready: %v", url, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func median(runs []run, value func(run) float64) float64 {
	values := make([]float64, len(runs))
	for i, r := range runs {
		values[i] = value(r)
	}
	slices.Sort(values)
	return values[len(values)/2]
}

// printTable writes the results as Markdown: per number of upstreams, each
// setup's CPU per request and its ratio to stock Caddy's round_robin.
func printTable(w io.Writer, rows []row) {
	generator := fmt.Sprintf("wrk -t1 -c%d", *connections)
	if *h2 {
		generator = fmt.Sprintf("HTTP/2 over cleartext to clients, h2load -t1 -c%d -m%d", *connections, h2Streams)
	}
	columns := latencyColumns()
	fmt.Fprintf(w, "%s, %d cores; %s; %d rounds of %s runs, medians.\n\n", runtime.Version(), onlineCores(), generator, *reps, *duration)
	fmt.Fprintf(w, "| upstreams | setup | proxy CPU per request | vs Caddy `round_robin` (same round) | requests/s | %s | %s | runs kept/all | load average |\n", columns[0], columns[1])
	fmt.Fprintln(w, "|----------:|-------|----------------------:|------------------------------------:|-----------:|----:|----:|--------------:|--------------|")
	for _, r := range rows {
		fmt.Fprintf(w, "| %d | %s | %.1f µs | %.3f× | %.0f | %s | %s | %d/%d | %s |\n", r.upstreams, r.setup, r.cpuPerRequest, r.ratio,
			r.rps, r.latency[0].Round(10*time.Microsecond), r.latency[1].Round(10*time.Microsecond), *reps, r.runs, cmp.Or(r.loadAverage, "?"))
	}
}
