package lbpolicy_test

import (
	"fmt"
	"io"
	"testing"

	"github.com/caddymesh/caddymesh/internal/consultest"
	"github.com/caddymesh/caddymesh/internal/meshtest"
)

// BenchmarkLargePoolThroughCaddy measures one request through Caddy's
// reverse_proxy with dynamic consul, to a pool of 64 or 256 instances (each
// its own backend on loopback), for least_latency beside Caddy's
// least_conn: the policy's Select plus what Caddy does with every upstream
// the source hands it. Compare them with benchstat -col /policy.
func BenchmarkLargePoolThroughCaddy(b *testing.B) {
	policies := []string{"least_latency", "least_conn"}
	for _, n := range []int{64, 256} {
		service := fmt.Sprintf("bench-pool-%d", n)
		for i := range n {
			backend := meshtest.StartBackend(b, fmt.Sprintf("%s-%d", service, i))
			agent.Register(b, consultest.Instance{Service: service, ID: backend.Name, Port: backend.Port()})
		}
		var site string
		for _, policy := range policies {
			site += fmt.Sprintf("handle /%s/* {\n\treverse_proxy {\n\t\tdynamic consul %s\n\t\tlb_policy %s\n\t}\n}\n", policy, service, policy)
		}
		url := serve(b, site)
		for _, policy := range policies {
			b.Run(fmt.Sprintf("upstreams=%d/policy=%s", n, policy), func(b *testing.B) {
				target := url + policy + "/"
				get(b, target) // warm: connections, estimates
				b.ReportAllocs()
				for b.Loop() {
					get(b, target)
				}
			})
		}
	}
}

// get sends one GET to url, and fails b unless an instance answers.
func get(b *testing.B, url string) {
	resp, err := meshtest.Client.Get(url)
	if err != nil {
		b.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		b.Fatalf("status %d from %s", resp.StatusCode, url)
	}
}
