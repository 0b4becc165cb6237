// Package caddymesh turns Caddy into a service-mesh sidecar and API gateway
// fed by HashiCorp Consul. Importing it registers every caddymesh module:
//
//   - mesh: the app holding settings all modules share, such as how to reach
//     Consul (Caddyfile: the `mesh` global option).
//   - http.reverse_proxy.upstreams.consul: the healthy instances of a Consul
//     service as reverse_proxy upstreams, kept current by blocking queries,
//     with Consul's weights (Caddyfile: `dynamic consul <service>`); with
//     `chain`, following the service's discovery chain (Consul's routers,
//     splitters and resolvers) per request.
//   - http.handlers.mesh_chain: the response header actions of a discovery
//     chain, in front of the reverse_proxy that follows it.
//   - http.reverse_proxy.selection_policies.smooth_weighted: nginx's smooth
//     weighted round robin (Caddyfile: `lb_policy smooth_weighted`).
//   - http.reverse_proxy.selection_policies.consistent_hash: a weighted
//     consistent-hash ring with bounded loads (Caddyfile:
//     `lb_policy consistent_hash`).
//   - http.reverse_proxy.selection_policies.least_latency: peak-EWMA with
//     the power of two choices (Caddyfile: `lb_policy least_latency`).
//   - http.handlers.mesh_identity, mesh_breaker, mesh_limit: who is calling
//     and may they, circuit breaking, traffic shaping (Caddyfile directives
//     of the same names).
//   - mesh.intentions.consul: Consul's service intentions, for
//     mesh_identity; admin.api.mesh: the admin API under /mesh/.
//   - http.handlers.mesh_service: a gateway's way to name the Consul
//     service from the request (/greeter/hello goes to greeter), refusing
//     services that may not be reached.
//   - http.handlers.mesh_router: the routes services declare in Consul
//     (Fabio's urlprefix- tags, or meta), served without reloads; with
//     tls.permission.mesh, on-demand TLS for the hosts they declare.
//   - caddy.storage.consul_kv: certificates and ACME locks in Consul's KV
//     store, shared by a fleet of Caddy instances (Caddyfile: `storage
//     consul_kv`); admin.api.mesh_storage: GET /mesh/storage.
//   - tls.get_certificate.connect, tls.ca_pool.source.connect,
//     http.reverse_proxy.transport.connect: Consul's service mesh, as a
//     Connect-native service: the leaf certificate Consul's CA issues a
//     service, Consul's Connect roots, and mutual TLS to other services
//     with their SPIFFE IDs verified (Caddyfile: `get_certificate connect`,
//     `trust_pool connect`, `transport connect`); admin.api.mesh_connect:
//     GET /mesh/connect.
//
// It plugs into Caddy's reverse_proxy rather than replacing it, so retries,
// passive health checks, transports, WebSockets, header manipulation,
// metrics and automatic HTTPS keep working as they always do.
//
// Build Caddy with it:
//
//	xcaddy build --with github.com/caddymesh/caddymesh
//
// A minimal Caddyfile:
//
//	{
//	    mesh {
//	        consul {
//	            address 127.0.0.1:8500
//	        }
//	    }
//	}
//
//	:8080 {
//	    reverse_proxy {
//	        dynamic consul greeter
//	        lb_policy smooth_weighted
//	    }
//	}
package caddymesh

import (
	// Caddyfile support: the mesh global option.
	_ "github.com/caddymesh/caddymesh/caddyfile"
	// Consul's service mesh: Connect certificates, roots and transport.
	_ "github.com/caddymesh/caddymesh/connect"
	// The mesh app and the consul upstream source.
	_ "github.com/caddymesh/caddymesh/discovery"
	_ "github.com/caddymesh/caddymesh/gateway"
	// The selection policies.
	_ "github.com/caddymesh/caddymesh/lbpolicy"
	// The sidecar's HTTP handlers.
	_ "github.com/caddymesh/caddymesh/middleware"
	// Certificate storage in Consul KV.
	_ "github.com/caddymesh/caddymesh/storage"
)
