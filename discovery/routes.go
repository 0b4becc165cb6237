package discovery

import (
	"cmp"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddymesh/caddymesh/internal/pool"
)

// route is a host and path prefix a service declares, in a tag such as
// Fabio's `urlprefix-shop.example.com/api strip=/api proto=https`, or in
// its meta, and how to proxy to it.
type route struct {
	// Host is the lower-cased host: a name, *.<domain> for its
	// subdomains, or empty for any host.
	Host string `json:"host"`
	// Path is the path prefix, matched as a plain prefix, as Fabio does.
	Path string `json:"path"`
	// Strip is removed from the front of the path before proxying.
	Strip string `json:"strip,omitempty"`
	// TLS dials the upstream over TLS (proto=https).
	TLS bool `json:"tls,omitempty"`
	// TLSSkipVerify accepts any certificate from the upstream.
	TLSSkipVerify bool `json:"tls_skip_verify,omitempty"`
	// HostHeader sets the Host the upstream sees: a name, or "dst" for the
	// upstream's own address.
	HostHeader string `json:"host_header,omitempty"`
	// Declaration is the tag or meta value declaring it.
	Declaration string `json:"declaration"`
}

// parseRoute reads a route declaration, `<host>/<path> [<option>...]`, as
// Fabio reads what follows its tag prefix. Options: strip=<prefix>,
// proto=http|https, tlsskipverify=true|false, host=<name>|dst. Fabio's
// other options (redirect, weight, allow, deny, auth, TCP and gRPC
// protos) are refused, rather than ignored: some of them restrict access.
func parseRoute(declaration string) (route, error) {
	r := route{Declaration: declaration}
	fields := strings.Fields(declaration)
	if len(fields) == 0 {
		return r, fmt.Errorf("empty route")
	}
	host, path, found := strings.Cut(fields[0], "/")
	if !found {
		return r, fmt.Errorf("%q is not <host>/<path>: TCP and SNI routes are not supported", fields[0])
	}
	r.Host, r.Path = strings.ToLower(host), "/"+path
	if err := checkHost(r.Host); err != nil {
		return r, err
	}
	for _, option := range fields[1:] {
		if err := r.setOption(option); err != nil {
			return r, err
		}
	}
	if r.TLSSkipVerify && !r.TLS {
		return r, fmt.Errorf("tlsskipverify=true without proto=https")
	}
	return r, nil
}

func (r *route) setOption(option string) error {
	name, value, _ := strings.Cut(option, "=")
	switch {
	case name == "strip" && strings.HasPrefix(value, "/") && !strings.ContainsAny(value, "{}"):
		r.Strip = value
	case option == "proto=http":
		r.TLS = false
	case option == "proto=https":
		r.TLS = true
	case option == "tlsskipverify=true" || option == "tlsskipverify=false":
		r.TLSSkipVerify = value == "true"
	case name == "host" && value != "":
		r.HostHeader = value
	default:
		return fmt.Errorf("option %q is not supported", option)
	}
	return nil
}

// checkHost accepts an empty host, a host name, *.<domain>, or an IP.
func checkHost(host string) error {
	name := strings.TrimPrefix(host, "*.")
	if host == "" || net.ParseIP(name) != nil {
		return nil
	}
	for label := range strings.SplitSeq(name, ".") {
		if !validServiceName(label) {
			return fmt.Errorf("host %q is not a host name", host)
		}
	}
	return nil
}

// routeEntry is a route of the table: a service's route and the healthy
// instances declaring it.
type routeEntry struct {
	route
	Service    string         `json:"service"`
	serviceVar any            // Service boxed once, for {http.vars.mesh_service}
	instances  *pool.Snapshot // healthy instances declaring the route
	proxy      *reverseproxy.Handler
}

// String names the entry, for logs and placeholders.
func (e *routeEntry) String() string { return e.Service + " " + e.Host + e.Path }

// declared is a route some instances of a service declare.
type declared struct {
	route
	service   string
	instances []pool.Instance // the healthy ones
}

// routeTable is the routes of every routed service, ready to match: the
// exact host, then the wildcard one label above it (*.example.com covers
// shop.example.com, as a certificate does), then routes for any host;
// within each, the longest path prefix first.
type routeTable struct {
	exact     map[string][]*routeEntry // by host
	wildcard  map[string][]*routeEntry // by the domain of *.<domain>, with its dot: .example.com
	anyHost   []*routeEntry
	entries   []*routeEntry
	conflicts []routeConflict
	rejected  []rejectedRoute
}

// routeConflict is a host and path several declarations claim: the first
// by service name, then declaration, wins.
type routeConflict struct {
	Host    string   `json:"host"`
	Path    string   `json:"path"`
	Chosen  string   `json:"chosen"`
	Ignored []string `json:"ignored"`
}

// rejectedRoute is a declaration that could not be read.
type rejectedRoute struct {
	Service     string `json:"service"`
	Declaration string `json:"declaration"`
	Reason      string `json:"reason"`
}

// newRouteTable arranges declared routes into a table, resolving
// conflicts. previous, when not nil, lends its snapshots to unchanged
// entries, so that policies keep what they built for them.
func newRouteTable(found []declared, rejected []rejectedRoute, previous *routeTable) *routeTable {
	slices.SortFunc(found, func(a, b declared) int {
		return cmp.Or(strings.Compare(a.Host, b.Host), cmp.Compare(len(b.Path), len(a.Path)), strings.Compare(a.Path, b.Path),
			strings.Compare(a.service, b.service), strings.Compare(a.Declaration, b.Declaration))
	})
	t := &routeTable{exact: make(map[string][]*routeEntry), wildcard: make(map[string][]*routeEntry), rejected: rejected}
	var kept map[string]*pool.Snapshot
	if previous != nil {
		kept = make(map[string]*pool.Snapshot, len(previous.entries))
		for _, e := range previous.entries {
			kept[e.Service+" "+e.Declaration] = e.instances
		}
	}
	for i, d := range found {
		if i > 0 && d.Host == found[i-1].Host && d.Path == found[i-1].Path {
			t.noteConflict(d, found[i-1])
			continue
		}
		e := &routeEntry{route: d.route, Service: d.service, serviceVar: d.service,
			instances: reuse(kept[d.service+" "+d.Declaration], d.instances)}
		t.add(e)
	}
	return t
}

func (t *routeTable) add(e *routeEntry) {
	t.entries = append(t.entries, e)
	switch {
	case e.Host == "":
		t.anyHost = append(t.anyHost, e)
	case strings.HasPrefix(e.Host, "*."):
		t.wildcard[e.Host[1:]] = append(t.wildcard[e.Host[1:]], e)
	default:
		t.exact[e.Host] = append(t.exact[e.Host], e)
	}
}

// noteConflict records that d lost its host and path to the declaration
// before it, the first of them in the table's order.
func (t *routeTable) noteConflict(d, winner declared) {
	ignored := d.service + " " + d.Declaration
	if n := len(t.conflicts); n > 0 && t.conflicts[n-1].Host == d.Host && t.conflicts[n-1].Path == d.Path {
		t.conflicts[n-1].Ignored = append(t.conflicts[n-1].Ignored, ignored)
		return
	}
	t.conflicts = append(t.conflicts, routeConflict{
		Host: d.Host, Path: d.Path, Chosen: winner.service + " " + winner.Declaration, Ignored: []string{ignored},
	})
}

// match finds the route of a request to host (lower-cased, without port)
// and path.
func (t *routeTable) match(host, path string) *routeEntry {
	if e := longestPrefix(t.exact[host], path); e != nil {
		return e
	}
	if e := longestPrefix(t.wildcard[parentDomain(host)], path); e != nil {
		return e
	}
	return longestPrefix(t.anyHost, path)
}

// longestPrefix returns the first of routes, which are by decreasing path
// length, whose path prefixes path.
func longestPrefix(routes []*routeEntry, path string) *routeEntry {
	for _, e := range routes {
		if strings.HasPrefix(path, e.Path) {
			return e
		}
	}
	return nil
}

// inMatchOrder returns the entries in the order requests try them: exact
// hosts, wildcard hosts (each by name), then any host.
func (t *routeTable) inMatchOrder() []*routeEntry {
	var out []*routeEntry
	for _, byHost := range []map[string][]*routeEntry{t.exact, t.wildcard} {
		for _, host := range slices.Sorted(maps.Keys(byHost)) {
			out = append(out, byHost[host]...)
		}
	}
	return append(out, t.anyHost...)
}

// allowsCertificate reports whether a route declares host by name, or by
// wildcard: routes for any host allow no certificate.
func (t *routeTable) allowsCertificate(host string) bool {
	return len(t.exact[host]) > 0 || len(t.wildcard[parentDomain(host)]) > 0
}

// parentDomain returns host without its first label, with the dot:
// .example.com for shop.example.com; empty for a single label.
func parentDomain(host string) string {
	if i := strings.IndexByte(host, '.'); i > 0 {
		return host[i:]
	}
	return ""
}
