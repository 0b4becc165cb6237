package gateway

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/rewrite"
	"go.uber.org/zap"

	"github.com/caddymesh/caddymesh/internal/consul"
	"github.com/caddymesh/caddymesh/internal/pool"
	"github.com/caddymesh/caddymesh/internal/running"
	"github.com/caddymesh/caddymesh/internal/urlpath"
	"github.com/caddymesh/caddymesh/internal/validate"
)

func init() {
	caddy.RegisterModule(new(Router))
}

// routeVar holds the route mesh_router chose for a request, for the
// upstream source of its reverse proxies.
const routeVar = "mesh_route"

// maxMetaRoutes is how many routes a service may declare in its meta:
// under <meta_prefix> and <meta_prefix>-1 to -9.
const maxMetaRoutes = 10

// Router serves the routes that services declare in Consul, as Fabio and
// Traefik's Consul provider do: each instance may declare host/path
// routes in its tags (Fabio's `urlprefix-shop.example.com/api strip=/api`)
// or its meta, and a request goes to the healthy instances that declare
// the route it matches: exact host and port, exact host, then the wildcard
// host one label above (*.example.com), then routes for any host; the
// longest path prefix first, of the request's normalized path, which is
// the path proxied. Routes change
// with Consul, within milliseconds and without a reload: one blocking
// query watches the catalog's names and tags, and only services that
// declare routes get a health watch.
//
// It proxies with Caddy's reverse_proxy, configured by proxy (selection
// policy, retries, transport, headers...). With on-demand TLS and the
// tls.permission.mesh module, Caddy obtains a certificate for each host a
// service declares, and for no other.
type Router struct {
	// Tags declaring routes start with this prefix. Default: urlprefix-.
	TagPrefix string `json:"tag_prefix,omitempty"`

	// Service meta declaring routes: the values of the keys <meta_prefix>
	// and <meta_prefix>-1 to -9, such as caddy-route-1 =
	// "shop.example.com/api". Default: none.
	MetaPrefix string `json:"meta_prefix,omitempty"`

	// Only services carrying this tag are routed.
	RequireTag string `json:"require_tag,omitempty"`

	// What a request no route matches gets: "404", or "next" for the
	// handlers after this one. Default: 404.
	Fallback string `json:"fallback,omitempty"`

	// The reverse_proxy handler's settings, without upstreams: load
	// balancing, retries, transport, headers. proto=https routes add TLS
	// to its transport.
	Proxy json.RawMessage `json:"proxy,omitempty"`

	// Connection settings overriding the mesh app's, field by field.
	Consul *consul.Config `json:"consul,omitempty"`

	ctx       caddy.Context
	logger    *zap.Logger
	conn      consul.Connection      // how routed services are watched
	catalogs  []*consul.CatalogWatch // names and tags; and services with meta routes
	table     atomic.Pointer[routeTable]
	proxies   map[proxyKind]*reverseproxy.Handler
	slashes   urlpath.EscapedSlashes // how paths are normalized
	wake      chan struct{}
	stop      func()                         // stops the refreshing goroutine; nil until it starts
	watches   map[string]*consul.HealthWatch // owned by the refreshing goroutine
	validated validate.Once                  // Validate's answer, for Caddy's call after Provision
}

// proxyKind is how a route's upstreams are dialled, and whether they see
// their own host:port as the Host (host=dst).
type proxyKind struct{ tls, skipVerify, hostDst bool }

var errNoRoute = errors.New("no route")

// CaddyModule returns the Caddy module information.
func (*Router) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.mesh_router",
		New: func() caddy.Module { return new(Router) },
	}
}

// Provision sets up the proxies and the catalog watches, and starts
// keeping the route table current.
func (rt *Router) Provision(ctx caddy.Context) error {
	rt.ctx, rt.logger = ctx, ctx.Logger()
	rt.TagPrefix = cmp.Or(rt.TagPrefix, "urlprefix-")
	rt.Fallback = cmp.Or(rt.Fallback, "404")
	if err := rt.Validate(); err != nil {
		return err
	}
	if err := rt.provisionProxies(ctx); err != nil {
		return err
	}
	conn, slashes, err := provisionGateway(ctx, rt.Consul)
	if err != nil {
		return err
	}
	rt.conn, rt.slashes = conn, slashes
	rt.wake = make(chan struct{}, 1)
	rt.watches = make(map[string]*consul.HealthWatch)
	rt.table.Store(newRouteTable(nil, nil, nil))
	if err := rt.watchCatalogs(conn); err != nil {
		return err
	}
	routers.Add(rt)
	rt.start()
	return nil
}

// start runs the goroutine that keeps the table current, until stop or
// the end of the config.
func (rt *Router) start() {
	ctx, cancel := context.WithCancel(rt.ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		rt.run(ctx)
	}()
	rt.stop = func() {
		cancel()
		<-done
	}
}

// Validate rejects bad values, naming the field and the value. Provision
// calls it before acting on them; its checks run once. The proxy settings
// are checked as the proxies are made from them (see checkProxy).
func (rt *Router) Validate() error { return rt.validated.Do(rt.check) }

// check makes Validate's checks.
func (rt *Router) check() error {
	if rt.Fallback != "" && rt.Fallback != "404" && rt.Fallback != "next" {
		return fmt.Errorf("mesh_router: fallback %q: must be 404 or next", rt.Fallback)
	}
	return nil
}

// Cleanup stops keeping the table current and lets go of the watches and
// proxies; after a failed Provision, of those it took.
func (rt *Router) Cleanup() error {
	if rt.stop != nil {
		rt.stop()
	}
	routers.Remove(rt)
	var errs []error
	for _, c := range rt.catalogs {
		c.Unsubscribe(rt.wake)
		consul.Catalogs.Release(c.Key)
	}
	for name := range rt.watches {
		rt.unwatch(name)
	}
	for _, h := range rt.proxies {
		errs = append(errs, h.Cleanup())
	}
	return errors.Join(errs...)
}

// run refreshes the route table whenever the catalog or a routed service
// changes, until ctx ends.
func (rt *Router) run(ctx context.Context) {
	for {
		rt.refresh()
		select {
		case <-rt.wake:
		case <-ctx.Done():
			return
		}
	}
}

// refresh watches the services that declare routes, and rebuilds the
// table from what their instances declare.
func (rt *Router) refresh() {
	rt.syncWatches(rt.routedServices())
	var found []declared
	var rejected []rejectedRoute
	for _, name := range slices.Sorted(maps.Keys(rt.watches)) {
		if a := rt.watches[name].Current(); a != nil {
			found, rejected = rt.declarations(name, a, found, rejected)
		}
	}
	table := newRouteTable(found, rejected, rt.table.Load())
	for _, e := range table.entries {
		e.proxy = rt.proxies[kindOf(e)]
	}
	rt.table.Store(table)
}

// declarations adds the routes the instances of service declare to found:
// every instance not in maintenance declares, and the healthy ones serve.
// $DC in a declaration is the instance's datacenter. Declarations that
// cannot be read go to rejected.
func (rt *Router) declarations(service string, a *consul.Answer, found []declared, rejected []rejectedRoute) ([]declared, []rejectedRoute) {
	type inDatacenter struct{ declaration, datacenter string }
	byDeclaration := make(map[inDatacenter]int) // index in found; -1 when rejected
	for _, inst := range a.All.Instances {
		for _, d := range rt.declaredBy(inst) {
			key := inDatacenter{d, inst.Datacenter}
			if _, seen := byDeclaration[key]; seen {
				continue
			}
			r, err := parseRoute(d, inst.Datacenter)
			if err != nil {
				byDeclaration[key] = -1
				rejected = append(rejected, rejectedRoute{Service: service, Declaration: d, Reason: err.Error()})
				continue
			}
			byDeclaration[key] = len(found)
			found = append(found, declared{route: r, service: service})
		}
	}
	for _, inst := range a.Healthy.Instances {
		for _, d := range rt.declaredBy(inst) {
			if i, ok := byDeclaration[inDatacenter{d, inst.Datacenter}]; ok && i >= 0 {
				found[i].instances = append(found[i].instances, inst)
			}
		}
	}
	return found, rejected
}

// declaredBy returns the route declarations of an instance: its route
// tags, without the prefix, and its route meta values.
func (rt *Router) declaredBy(inst pool.Instance) []string {
	var out []string
	for _, tag := range inst.Tags {
		if d, ok := strings.CutPrefix(strings.TrimSpace(tag), rt.TagPrefix); ok {
			out = append(out, strings.TrimSpace(d))
		}
	}
	if rt.MetaPrefix != "" {
		for key, value := range inst.Meta {
			if suffix, ok := strings.CutPrefix(key, rt.MetaPrefix); ok && isMetaRouteSuffix(suffix) {
				out = append(out, strings.TrimSpace(value))
			}
		}
	}
	return out
}

// isMetaRouteSuffix reports whether a meta key is <prefix> plus suffix:
// nothing, or -1 to -9.
func isMetaRouteSuffix(suffix string) bool {
	return suffix == "" || (len(suffix) == 2 && suffix[0] == '-' && suffix[1] >= '1' && suffix[1] <= '9')
}

// ServeHTTP proxies a request to the healthy instances of the route its
// normalized path matches.
func (rt *Router) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if status, err := urlpath.NormalizeRequest(w.Header(), r, rt.slashes); err != nil {
		return caddyhttp.Error(status, err)
	}
	e := rt.table.Load().match(r.Host, r.TLS != nil, r.URL.Path)
	if e == nil {
		if rt.Fallback == "next" {
			return next.ServeHTTP(w, r)
		}
		return caddyhttp.Error(http.StatusNotFound, errNoRoute)
	}
	caddyhttp.SetVar(r.Context(), routeVar, e)
	caddyhttp.SetVar(r.Context(), ServiceVar, e.serviceVar)
	if e.Strip != "" {
		repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
		rewrite.Rewrite{StripPathPrefix: e.Strip}.Rewrite(r, repl)
	}
	if e.Prepend != "" { // a clean path prefix: the same escaped or not
		r.URL.Path = e.Prepend + r.URL.Path
		if r.URL.RawPath != "" {
			r.URL.RawPath = e.Prepend + r.URL.RawPath
		}
	}
	if e.HostHeader != "" && e.HostHeader != "dst" { // dst: the proxy sets it per upstream
		r.Host = e.HostHeader
	}
	return e.proxy.ServeHTTP(w, r, next)
}

// hostWithoutPort returns host, lower-cased, without its port.
func hostWithoutPort(host string) string {
	if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.Contains(host[i:], "]") {
		host = host[:i]
	}
	return strings.ToLower(strings.Trim(host, "[]"))
}

// routers are the routers of the configs running, for the admin API and
// the certificate permission.
var routers running.Set[*Router]

// routeTables returns the current table of every router running.
func routeTables() []*routeTable {
	var tables []*routeTable
	for _, rt := range routers.All() {
		tables = append(tables, rt.table.Load())
	}
	return tables
}

// Interface guards
var (
	_ caddy.Provisioner                  = (*Router)(nil)
	_ caddy.Validator                    = (*Router)(nil)
	_ caddy.CleanerUpper                 = (*Router)(nil)
	_ caddyhttp.MiddlewareHandler        = (*Router)(nil)
	_ reverseproxy.UpstreamSource        = routeUpstreams{}
	_ reverseproxy.CachingUpstreamSource = routeUpstreams{}
)
