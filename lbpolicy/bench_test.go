package lbpolicy

import (
	"fmt"
	"net/http"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddymesh/caddymesh/internal/pool"
)

// benchmarkPolicies returns caddymesh's policies and Caddy's built-in ones
// they compete with, ready to select from upstreams.
func benchmarkPolicies(b *testing.B, upstreams reverseproxy.UpstreamPool) map[string]reverseproxy.Selector {
	weights := make(Weights, len(upstreams))
	caddyWeights := make([]int, len(upstreams))
	for i, u := range upstreams {
		weights[u.Dial] = i%4 + 1
		caddyWeights[i] = i%4 + 1
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: b.Context()})
	b.Cleanup(cancel)
	provision := func(p caddy.Provisioner) {
		if err := p.Provision(ctx); err != nil {
			b.Fatal(err)
		}
	}
	wrr := &reverseproxy.WeightedRoundRobinSelection{Weights: caddyWeights}
	provision(wrr)
	header := &reverseproxy.HeaderHashSelection{Field: "X-User"}
	provision(header)
	return map[string]reverseproxy.Selector{
		"smooth_weighted":              &SmoothWeighted{Weights: weights},
		"consistent_hash":              provisioned(b, &ConsistentHash{Key: "{http.request.header.X-User}"}),
		"consistent_hash_points_256":   provisioned(b, &ConsistentHash{Key: "{http.request.header.X-User}", Points: 256}),
		"consistent_hash_bounded_load": provisioned(b, &ConsistentHash{Key: "{http.request.header.X-User}", BoundedLoad: 1.25}),
		"least_latency":                newTestLeastLatency(b),
		"least_conn":                   &reverseproxy.LeastConnSelection{},
		"random_choose_2":              &reverseproxy.RandomChoiceSelection{Choose: 2},
		"round_robin":                  &reverseproxy.RoundRobinSelection{},
		"weighted_round_robin":         wrr,
		"ip_hash":                      &reverseproxy.IPHashSelection{},
		"uri_hash":                     &reverseproxy.URIHashSelection{},
		"header":                       header,
	}
}

// BenchmarkSelect measures one selection from a pool, serially and from
// parallel goroutines, for caddymesh's policies and Caddy's built-in ones
// on the same pools and requests. Each selection sees another of 4096
// clients, paths and users (30-byte keys), as real traffic does; mode
// one_key repeats a single request, which keeps a hash policy's memory hot
// in cache, as most policy benchmarks (Caddy's among them) do. Compare
// them with benchstat -col /policy.
func BenchmarkSelect(b *testing.B) {
	for _, n := range []int{4, 64, 256} {
		names := make([]string, n)
		for i := range names {
			names[i] = fmt.Sprintf("10.0.%d.%d", i/256, i%256)
		}
		upstreams := upstreamsNamed(names...)
		policies := benchmarkPolicies(b, upstreams)
		for _, name := range []string{
			"smooth_weighted", "round_robin", "weighted_round_robin",
			"consistent_hash", "consistent_hash_points_256", "consistent_hash_bounded_load", "ip_hash", "uri_hash", "header",
			"least_latency", "least_conn", "random_choose_2",
		} {
			policy := policies[name]
			b.Run(fmt.Sprintf("upstreams=%d/mode=serial/policy=%s", n, name), func(b *testing.B) {
				next := newBenchmarkRequest()
				b.ReportAllocs()
				for b.Loop() {
					policy.Select(upstreams, next(), nil)
				}
			})
			b.Run(fmt.Sprintf("upstreams=%d/mode=one_key/policy=%s", n, name), func(b *testing.B) {
				r := newBenchmarkRequest()()
				b.ReportAllocs()
				for b.Loop() {
					policy.Select(upstreams, r, nil)
				}
			})
			b.Run(fmt.Sprintf("upstreams=%d/mode=parallel/policy=%s", n, name), func(b *testing.B) {
				b.ReportAllocs()
				b.RunParallel(func(pb *testing.PB) {
					next := newBenchmarkRequest()
					for pb.Next() {
						policy.Select(upstreams, next(), nil)
					}
				})
			})
		}
	}
}

// BenchmarkPreselect measures a preselected attempt, as a large pool of the
// consul source gets one: Preselect names the candidates from the snapshot,
// then Select takes one of them. Compare with BenchmarkSelect's serial mode
// on the whole pool.
func BenchmarkPreselect(b *testing.B) {
	for _, n := range []int{64, 256} {
		snapshot, upstreams := largePool(n)
		policies := preselectingPolicies(b)
		policies["least_latency"] = newTestLeastLatency(b)
		for name, p := range policies {
			b.Run(fmt.Sprintf("upstreams=%d/policy=%s", n, name), func(b *testing.B) {
				next := newBenchmarkRequest()
				indexes := make([]int, 0, pool.MaxCandidates)
				candidates := make(reverseproxy.UpstreamPool, pool.MaxCandidates)
				preselection := &pool.Preselection{By: p, Snapshot: snapshot}
				b.ReportAllocs()
				for b.Loop() {
					r := next()
					preselection.Candidates = p.Preselect(snapshot, r, indexes)
					for i, c := range preselection.Candidates {
						candidates[i] = upstreams[c]
					}
					pool.AttachPreselection(r, preselection)
					p.Select(candidates[:len(preselection.Candidates)], r, nil)
				}
			})
		}
	}
}

// newBenchmarkRequest returns a function that returns a request as a Caddy
// server hands it to a policy, each time from the next of 4096 clients,
// with the next path and user. (The benchmarked policies read those, not
// the client_ip variable.)
func newBenchmarkRequest() func() *http.Request {
	type client struct{ remoteAddr, uri, user string }
	clients := make([]client, 4096)
	for i := range clients {
		clients[i] = client{
			remoteAddr: fmt.Sprintf("203.0.%d.%d:41234", i/256, i%256),
			uri:        fmt.Sprintf("/catalog/items/%08x?v=full", uint32(i*2654435761)), // 30 bytes
			user:       fmt.Sprintf("user-%08x-41b8-4d2a-9c1e-0", i),                    // 30 bytes
		}
	}
	r := caddyRequest("")
	r.Header.Set("X-User", "")
	user := r.Header["X-User"] // shares its value with the header
	i := 0
	return func() *http.Request {
		c := &clients[i%len(clients)]
		i++
		r.RemoteAddr, r.RequestURI, user[0] = c.remoteAddr, c.uri, c.user
		return r
	}
}

// BenchmarkBuild measures building a policy's structure for a new pool:
// once per Consul snapshot or static pool, never per request.
func BenchmarkBuild(b *testing.B) {
	for _, n := range []int{64, 256, 1024} {
		members := members(n)
		weights := make([]int, n)
		for i := range weights {
			weights[i] = i%4 + 1
		}
		b.Run(fmt.Sprintf("upstreams=%d/structure=ring", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				newRing(members, defaultPoints)
			}
		})
		b.Run(fmt.Sprintf("upstreams=%d/structure=schedule", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				newSchedule(weights)
			}
		})
	}
}

// BenchmarkRingPick measures the ring's own part of a consistent_hash
// pick, with no request: a key hash (of 4,096 varied ones, or one) to its
// member, every member usable. BenchmarkSelect's consistent_hash adds the
// key's evaluation and hash and the upstream's availability to it.
func BenchmarkRingPick(b *testing.B) {
	for _, n := range []int{4, 64, 256} {
		r := newRing(members(n), defaultPoints)
		hashes := keyHashes(4096)
		b.Run(fmt.Sprintf("upstreams=%d/mode=serial", n), func(b *testing.B) {
			i := 0
			for b.Loop() {
				r.pick(hashes[i%len(hashes)], allUsable)
				i++
			}
		})
		b.Run(fmt.Sprintf("upstreams=%d/mode=one_key", n), func(b *testing.B) {
			for b.Loop() {
				r.pick(hashes[0], allUsable)
			}
		})
	}
}
