package discovery_test

import (
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/caddymesh/caddymesh/internal/consultest"
	"github.com/caddymesh/caddymesh/internal/meshtest"
)

// trialSpacing separates two changes to the service. Each change uses one
// token of a watcher's rate limit (one query per 100ms, burst 2); spaced
// like this, every trial measures a quiet service's reaction. Faster churn
// is batched into at most ten updates a second, by design.
const trialSpacing = 150 * time.Millisecond

// BenchmarkPropagation measures the time from a change in Consul until it
// shows, for the four kinds of change: an instance registered, its check
// turning critical, turning passing again, and the instance deregistered.
// via=caddy is until the next request through Caddy reflects the change;
// via=mesh_router, the same for a service declaring a route (urlprefix-/),
// which mesh_router learns of through the catalog; via=blocking-query,
// their floor, is until a bare Consul blocking query on the service wakes
// up. One iteration runs all four changes; run it with -benchtime=25x or
// more for 100+ trials. It reports the percentiles of all trials, and the
// p99 of each kind of change.
func BenchmarkPropagation(b *testing.B) {
	backend := meshtest.StartBackend(b, "a")
	inst := consultest.Instance{Service: "propagation", ID: "propagation-a", Port: backend.Port()}
	routed := consultest.Instance{Service: "propagation-routed", ID: "propagation-routed-a", Port: backend.Port(), Tags: []string{"urlprefix-/"}}

	b.Run("via=caddy", func(b *testing.B) {
		changes := changesOf(b, inst, http.StatusServiceUnavailable)
		url := serveService(b, inst.Service)
		measure(b, len(changes), func(i int) time.Duration {
			return timeUntilStatus(b, changes[i].change, url, changes[i].status)
		}, func(i int) string { return changes[i].name })
	})
	b.Run("via=mesh_router", func(b *testing.B) {
		changes := changesOf(b, routed, http.StatusNotFound)
		port := meshtest.FreePort()
		meshtest.Load(b, fmt.Sprintf("{\n\t%s\n}\n:%d {\n\tmesh_router {\n\t\tconsul {\n\t\t\taddress %s\n\t\t}\n\t}\n\trespond \"next\"\n}\n",
			meshtest.Globals(), port, agent.Addr), "caddyfile")
		url := fmt.Sprintf("http://127.0.0.1:%d/", port)
		measure(b, len(changes), func(i int) time.Duration {
			return timeUntilStatus(b, changes[i].change, url, changes[i].status)
		}, func(i int) string { return changes[i].name })
	})
	b.Run("via=blocking-query", func(b *testing.B) {
		changes := changesOf(b, inst, 0) // statuses unused
		measure(b, len(changes), func(i int) time.Duration {
			return timeUntilWake(b, changes[i].change, inst.Service)
		}, func(i int) string { return changes[i].name })
	})
}

// change is a change to an instance in Consul, and what a request answers
// once it shows.
type change struct {
	name   string
	change func()
	status int
}

// changesOf are the four changes of inst, after which a request answers
// 200 while it is healthy, 503 while it is critical, and gone once
// deregistered.
func changesOf(b *testing.B, inst consultest.Instance, gone int) []change {
	return []change{
		{"register", func() { agent.Register(b, inst) }, http.StatusOK},
		{"critical", func() { agent.SetStatus(b, inst.ID, api.HealthCritical) }, http.StatusServiceUnavailable},
		{"passing", func() { agent.SetStatus(b, inst.ID, api.HealthPassing) }, http.StatusOK},
		{"deregister", func() { agent.Deregister(b, inst.ID) }, gone},
	}
}

// serveService loads a Caddy config proxying to service, and returns its URL.
func serveService(b *testing.B, service string) string {
	port := meshtest.FreePort()
	meshtest.Load(b, fmt.Sprintf(`{
	%s
	mesh {
		consul {
			address %s
		}
	}
}
:%d {
	reverse_proxy {
		dynamic consul %s
	}
}`, meshtest.Globals(), agent.Addr, port, service), "caddyfile")
	return fmt.Sprintf("http://127.0.0.1:%d/", port)
}

// measure runs trial(0..kinds-1) on each iteration, trialSpacing apart,
// and reports the percentiles.
func measure(b *testing.B, kinds int, trial func(int) time.Duration, name func(int) string) {
	byKind := make([][]time.Duration, kinds)
	var all []time.Duration
	for b.Loop() {
		for i := range kinds {
			time.Sleep(trialSpacing)
			d := trial(i)
			byKind[i] = append(byKind[i], d)
			all = append(all, d)
		}
	}
	b.ReportMetric(float64(len(all)), "trials")
	b.ReportMetric(percentile(all, 50), "p50-ms")
	b.ReportMetric(percentile(all, 99), "p99-ms")
	for i := range kinds {
		b.ReportMetric(percentile(byKind[i], 99), name(i)+"-p99-ms")
	}
}

// timeUntilWake makes change and returns how long it took a blocking query
// on service, in flight before the change, to return.
func timeUntilWake(b *testing.B, change func(), service string) time.Duration {
	health := agent.Client.Health()
	_, meta, err := health.Service(service, "", false, nil)
	if err != nil {
		b.Fatal(err)
	}
	woke := make(chan time.Time, 1)
	go func() {
		health.Service(service, "", false, &api.QueryOptions{WaitIndex: meta.LastIndex, WaitTime: time.Minute})
		woke <- time.Now()
	}()
	time.Sleep(20 * time.Millisecond) // let the query reach the agent and block
	start := time.Now()
	change()
	return (<-woke).Sub(start)
}

// timeUntilStatus makes change and returns how long it took until a
// request to url answered with status want.
func timeUntilStatus(b *testing.B, change func(), url string, want int) time.Duration {
	start := time.Now()
	change()
	for {
		if status, _ := meshtest.Get(url); status == want {
			return time.Since(start)
		}
		if time.Since(start) > 10*time.Second {
			b.Fatalf("no status %d within 10s of the change", want)
		}
	}
}

// percentile returns the p-th percentile of ds in milliseconds
// (nearest rank).
func percentile(ds []time.Duration, p int) float64 {
	sorted := slices.Clone(ds)
	slices.Sort(sorted)
	rank := (p*len(sorted) + 99) / 100
	return float64(sorted[max(rank, 1)-1]) / float64(time.Millisecond)
}
