// Package chaos is caddymesh's resilience suite: each scenario runs steady
// open-loop load through a Caddy process that proxies with `dynamic consul`
// (or `mesh_router`) to real backends registered in a real Consul agent,
// breaks something (backends restarted or killed, Consul killed, erroring or
// hanging, configs reloaded, a catalog of thousands of instances; in a
// cluster of three Consul servers and a client agent, the leader killed,
// quorum lost, the client agent killed or leaving, the servers coming back
// in the worst order), and asserts that no request failed and that the
// watches, goroutines, memory and Consul request rate stay bounded.
//
// `go test ./internal/chaos` runs the short form (part of `make test`);
// `make chaos` runs the long form behind RESILIENCE.md and prints its table.
package chaos
