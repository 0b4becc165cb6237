package discovery

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
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/headers"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/rewrite"
	"go.uber.org/zap"

	"github.com/caddymesh/caddymesh/internal/consul"
	"github.com/caddymesh/caddymesh/internal/meshapp"
	"github.com/caddymesh/caddymesh/internal/pool"
	"github.com/caddymesh/caddymesh/internal/running"
	"github.com/caddymesh/caddymesh/internal/svcname"
	"github.com/caddymesh/caddymesh/internal/urlpath"
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
	Consul *ConsulConfig `json:"consul,omitempty"`

	ctx      caddy.Context
	logger   *zap.Logger
	source   *ConsulUpstreams       // how routed services are watched
	catalogs []*consul.CatalogWatch // names and tags; and services with meta routes
	table    atomic.Pointer[routeTable]
	proxies  map[proxyKind]*reverseproxy.Handler
	slashes  urlpath.EscapedSlashes // how paths are normalized
	wake     chan struct{}
	stop     func()                   // stops the refreshing goroutine; nil until it starts
	watches  map[string]*serviceWatch // owned by the refreshing goroutine
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
	var err error
	if rt.slashes, err = meshapp.EscapedSlashes(ctx); err != nil {
		return err
	}
	conn, err := consul.Provision(ctx, rt.Consul)
	if err != nil {
		return err
	}
	rt.source = &ConsulUpstreams{logger: rt.logger, conn: conn, datacenters: []string{conn.Datacenter}}
	rt.source.setDefaults()
	rt.wake = make(chan struct{}, 1)
	rt.watches = make(map[string]*serviceWatch)
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

// Validate rejects bad values, naming the field and the value.
func (rt *Router) Validate() error {
	if rt.Fallback != "" && rt.Fallback != "404" && rt.Fallback != "next" {
		return fmt.Errorf("mesh_router: fallback %q: must be 404 or next", rt.Fallback)
	}
	var proxy reverseproxy.Handler
	if len(rt.Proxy) > 0 {
		if err := json.Unmarshal(rt.Proxy, &proxy); err != nil {
			return fmt.Errorf("mesh_router: proxy: %v", err)
		}
	}
	if len(proxy.Upstreams) > 0 || proxy.DynamicUpstreamsRaw != nil {
		return errors.New("mesh_router: proxy: takes no upstreams: the routes' services are the upstreams")
	}
	return nil
}

// provisionProxies makes the reverse proxies of every kind of route.
func (rt *Router) provisionProxies(ctx caddy.Context) error {
	rt.proxies = make(map[proxyKind]*reverseproxy.Handler)
	for _, kind := range []proxyKind{{}, {tls: true}, {tls: true, skipVerify: true},
		{hostDst: true}, {tls: true, hostDst: true}, {tls: true, skipVerify: true, hostDst: true}} {
		h := new(reverseproxy.Handler)
		if len(rt.Proxy) > 0 {
			if err := json.Unmarshal(rt.Proxy, h); err != nil {
				return fmt.Errorf("mesh_router: proxy: %v", err)
			}
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
		h.DynamicUpstreams = routeUpstreams{preselector: preselectorOf(h)}
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

// watchCatalogs takes the catalog watches: names and tags, and, with
// meta_prefix, the services whose meta declares routes.
func (rt *Router) watchCatalogs(conn consul.Connection) error {
	keys := []consul.CatalogKey{{Endpoint: conn.Endpoint, Datacenter: conn.Datacenter}}
	if rt.MetaPrefix != "" {
		keys = append(keys, consul.CatalogKey{Endpoint: conn.Endpoint, Datacenter: conn.Datacenter, Filter: rt.metaFilter()})
	}
	for _, key := range keys {
		c, err := consul.TakeCatalog(key, conn)
		if err != nil {
			return err
		}
		c.Subscribe(rt.wake)
		rt.catalogs = append(rt.catalogs, c)
	}
	return nil
}

// metaFilter selects the services with a route in their meta.
func (rt *Router) metaFilter() string {
	clauses := []string{fmt.Sprintf("%q in ServiceMeta", rt.MetaPrefix)}
	for i := 1; i < maxMetaRoutes; i++ {
		clauses = append(clauses, fmt.Sprintf("%q in ServiceMeta", fmt.Sprintf("%s-%d", rt.MetaPrefix, i)))
	}
	return strings.Join(clauses, " or ")
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
	for _, sw := range rt.watches {
		rt.unsubscribe(sw)
		sw.release()
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
		if a := rt.watches[name].watchers[0].Current(); a != nil {
			found, rejected = rt.declarations(name, a, found, rejected)
		}
	}
	table := newRouteTable(found, rejected, rt.table.Load())
	for _, e := range table.entries {
		e.proxy = rt.proxies[proxyKind{tls: e.TLS, skipVerify: e.TLSSkipVerify, hostDst: e.HostHeader == "dst"}]
	}
	rt.table.Store(table)
}

// routedServices are the services of the catalog that declare routes,
// among those whose names follow the service-name rule.
func (rt *Router) routedServices() map[string]bool {
	routed := make(map[string]bool)
	for i, c := range rt.catalogs {
		services := c.Services()
		if services == nil {
			continue
		}
		for name, tags := range *services {
			byMeta := i > 0 // the second catalog holds the services with meta routes
			byTag := slices.ContainsFunc(tags, rt.isRouteTag)
			if (byMeta || byTag) && (rt.RequireTag == "" || slices.Contains(tags, rt.RequireTag)) && svcname.Valid(name) {
				routed[name] = true
			}
		}
	}
	return routed
}

func (rt *Router) isRouteTag(tag string) bool {
	return strings.HasPrefix(strings.TrimSpace(tag), rt.TagPrefix)
}

// syncWatches watches the routed services, and only those.
func (rt *Router) syncWatches(routed map[string]bool) {
	for name, sw := range rt.watches {
		if !routed[name] {
			rt.unsubscribe(sw)
			sw.release()
			delete(rt.watches, name)
		}
	}
	for name := range routed {
		if rt.watches[name] != nil {
			continue
		}
		sw, err := rt.source.watch(name)
		if err != nil {
			rt.logger.Error("cannot watch a routed service", zap.String("service", name), zap.Error(err))
			continue
		}
		for _, w := range sw.watchers {
			w.Subscribe(rt.wake)
		}
		rt.watches[name] = sw
	}
}

func (rt *Router) unsubscribe(sw *serviceWatch) {
	for _, w := range sw.watchers {
		w.Unsubscribe(rt.wake)
	}
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
	return handOut(r, e.instances, ru.preselector), nil
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
	_ caddy.Provisioner           = (*Router)(nil)
	_ caddy.Validator             = (*Router)(nil)
	_ caddy.CleanerUpper          = (*Router)(nil)
	_ caddyhttp.MiddlewareHandler = (*Router)(nil)
	_ reverseproxy.UpstreamSource = routeUpstreams{}
)
