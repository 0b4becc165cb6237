package gateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/headers"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddymesh/caddymesh/internal/pool"
)

// errProxyUpstreams refuses upstreams in mesh_router's proxy settings.
var errProxyUpstreams = errors.New("mesh_router: proxy: takes no upstreams: the routes' services are the upstreams")

// checkProxy rejects proxy settings that name upstreams.
func checkProxy(h *reverseproxy.Handler) error {
	if len(h.Upstreams) > 0 || h.DynamicUpstreamsRaw != nil {
		return errProxyUpstreams
	}
	return nil
}

// proxyKinds are every kind of route: over TLS or not (and then verifying
// the upstream's certificate or not), each with the Host as requested or
// the upstream's own.
func proxyKinds() []proxyKind {
	var kinds []proxyKind
	for _, hostDst := range []bool{false, true} {
		for _, tls := range []bool{false, true} {
			kinds = append(kinds, proxyKind{tls: tls, hostDst: hostDst})
			if tls {
				kinds = append(kinds, proxyKind{tls: tls, skipVerify: true, hostDst: hostDst})
			}
		}
	}
	return kinds
}

// kindOf is the kind of route e is.
func kindOf(e *routeEntry) proxyKind {
	return proxyKind{tls: e.TLS, skipVerify: e.TLSSkipVerify, hostDst: e.HostHeader == "dst"}
}

// provisionProxies makes the reverse proxies of every kind of route, each
// from the proxy settings decoded once for it (each proxy is provisioned,
// so written into, on its own).
func (rt *Router) provisionProxies(ctx caddy.Context) error {
	rt.proxies = make(map[proxyKind]*reverseproxy.Handler)
	for _, kind := range proxyKinds() {
		h := new(reverseproxy.Handler)
		if len(rt.Proxy) > 0 {
			if err := json.Unmarshal(rt.Proxy, h); err != nil {
				return fmt.Errorf("mesh_router: proxy: %v", err)
			}
		}
		if err := checkProxy(h); err != nil {
			return err
		}
		if kind.tls {
			if err := withTLS(h, kind.skipVerify); err != nil {
				return err
			}
		}
		if kind.hostDst {
			withUpstreamHost(h)
		}
		h.DynamicUpstreams = routeUpstreams{}
		if err := h.Provision(ctx); err != nil {
			return fmt.Errorf("mesh_router: proxy: %v", err)
		}
		h.DynamicUpstreams = routeUpstreams{preselector: pool.PreselectorOf(h)}
		rt.proxies[kind] = h
	}
	return nil
}

// withTLS makes h's HTTP transport dial over TLS.
func withTLS(h *reverseproxy.Handler, skipVerify bool) error {
	transport := new(reverseproxy.HTTPTransport)
	if h.TransportRaw != nil {
		if err := json.Unmarshal(h.TransportRaw, transport); err != nil {
			return fmt.Errorf("mesh_router: proxy transport (proto=https routes need the http transport): %v", err)
		}
	}
	if transport.TLS == nil {
		transport.TLS = new(reverseproxy.TLSConfig)
	}
	transport.TLS.InsecureSkipVerify = transport.TLS.InsecureSkipVerify || skipVerify
	h.TransportRaw = caddyconfig.JSONModuleObject(transport, "protocol", "http", nil)
	return nil
}

// withUpstreamHost makes h send each upstream its own host:port as the
// Host, over any Host the proxy settings set.
func withUpstreamHost(h *reverseproxy.Handler) {
	if h.Headers == nil {
		h.Headers = new(headers.Handler)
	}
	if h.Headers.Request == nil {
		h.Headers.Request = new(headers.HeaderOps)
	}
	if h.Headers.Request.Set == nil {
		h.Headers.Request.Set = make(http.Header)
	}
	h.Headers.Request.Set["Host"] = []string{"{http.reverse_proxy.upstream.hostport}"}
}

// routeUpstreams gives the reverse proxies of mesh_router the healthy
// instances of the route chosen for a request.
type routeUpstreams struct {
	preselector pool.Preselector // the proxy's policy, if it can preselect
}

// GetUpstreams returns the instances of the request's route, or the
// candidates the policy names among them (see ConsulUpstreams.GetUpstreams).
func (ru routeUpstreams) GetUpstreams(r *http.Request) ([]*reverseproxy.Upstream, error) {
	e, _ := caddyhttp.GetVar(r.Context(), routeVar).(*routeEntry)
	if e == nil {
		return nil, errNoRoute
	}
	return pool.HandOut(r, e.instances, ru.preselector), nil
}
