package gateway

import (
	"cmp"
	"fmt"
	"maps"
	"net"
	"os"
	pathpkg "path"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddymesh/caddymesh/internal/consul"
	"github.com/caddymesh/caddymesh/internal/pool"
)

// route is a host and path prefix a service declares, in a tag such as
// Fabio's `urlprefix-shop.example.com/api strip=/api proto=https`, or in
// its meta, and how to proxy to it.
type route struct {
	// Host is the lower-cased host: a name, *.<domain> for its
	// subdomains, or empty for any host. A name may have a port: then the
	// route is only for requests to that port.
	Host string `json:"host"`
	// Path is the path prefix, matched as a plain prefix, as Fabio does.
	Path string `json:"path"`
	// Strip is removed from the front of the path before proxying.
	Strip string `json:"strip,omitempty"`
	// TLS dials the upstream over TLS (proto=https).
	TLS bool `json:"tls,omitempty"`
	// TLSSkipVerify accepts any certificate from the upstream.
	TLSSkipVerify bool `json:"tls_skip_verify,omitempty"`
	// Prepend is put in front of the path, after Strip, before proxying.
	Prepend string `json:"prepend,omitempty"`
	// HostHeader sets the Host the upstream sees: a name, or "dst" for the
	// instance's own host:port.
	HostHeader string `json:"host_header,omitempty"`
	// Declaration is the tag or meta value declaring it.
	Declaration string `json:"declaration"`
}

// parseRoute reads a route declaration, `<host>[/<path>] [<option>...]`,
// as Fabio reads what follows its tag prefix: a host alone is every path
// of it, and $DC or ${DC} is datacenter. Options: strip=<prefix>,
// prepend=<prefix>, proto=http|https, tlsskipverify=true|false,
// host=<name>|dst. Fabio's other options (redirect, weight, allow, deny,
// auth, TCP and gRPC protos) are refused, rather than ignored: some of
// them restrict access.
func parseRoute(declaration, datacenter string) (route, error) {
	r := route{Declaration: declaration}
	fields := strings.Fields(declaration)
	if len(fields) == 0 {
		return r, fmt.Errorf("empty route")
	}
	src, err := expandDatacenter(fields[0], datacenter)
	if err != nil {
		return r, err
	}
	if strings.HasPrefix(src, ":") {
		return r, fmt.Errorf("%q is a TCP route: TCP and SNI routes are not supported", src)
	}
	host, path, _ := strings.Cut(src, "/")
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

// expandDatacenter replaces $DC and ${DC} in src with datacenter, as Fabio
// does; any other variable is refused, where Fabio would expand it to
// nothing.
func expandDatacenter(src, datacenter string) (string, error) {
	var unknown []string
	expanded := os.Expand(src, func(name string) string {
		if name == "DC" {
			return datacenter
		}
		unknown = append(unknown, name)
		return ""
	})
	if len(unknown) > 0 {
		return "", fmt.Errorf("variable %q in %q: only $DC and ${DC} are expanded", unknown[0], src)
	}
	return expanded, nil
}

func (r *route) setOption(option string) error {
	name, value, _ := strings.Cut(option, "=")
	switch {
	case name == "strip" && strings.HasPrefix(value, "/") && !strings.ContainsAny(value, "{}"):
		r.Strip = value
	case name == "prepend" && isCleanPathPrefix(value):
		r.Prepend = value
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

// isCleanPathPrefix reports whether prefix is a path that needs no
// escaping and has no dot segments or repeated slashes, such as /v2/.
func isCleanPathPrefix(prefix string) bool {
	if !strings.HasPrefix(prefix, "/") || strings.Trim(prefix, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~/") != "" {
		return false
	}
	return prefix == "/" || pathpkg.Clean(prefix) == strings.TrimSuffix(prefix, "/")
}

// checkHost accepts an empty host, or a host name, *.<domain> or an IPv4
// address, a name or an address with an optional :<port>.
func checkHost(host string) error {
	name, port, hasPort := strings.Cut(host, ":")
	if hasPort {
		if consul.CheckPort(port) != nil || strings.HasPrefix(name, "*.") {
			return fmt.Errorf("host %q: a port is from 1 to 65535, after a name or an address (not a wildcard)", host)
		}
	}
	wildcardless := strings.TrimPrefix(name, "*.")
	if host == "" || net.ParseIP(wildcardless) != nil {
		return nil
	}
	for label := range strings.SplitSeq(wildcardless, ".") {
		if !validHostLabel(label) {
			return fmt.Errorf("host %q is not a host name", host)
		}
	}
	return nil
}

// validHostLabel reports whether label is a DNS label: 1 to 63 letters,
// digits, - and _, starting and ending with a letter or digit.
func validHostLabel(label string) bool {
	if len(label) == 0 || len(label) > 63 {
		return false
	}
	for i := 0; i < len(label); i++ {
		c := label[i]
		alnum := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
		inner := c == '-' || c == '_'
		if !alnum && (!inner || i == 0 || i == len(label)-1) {
			return false
		}
	}
	return true
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
// exact host and port, then the exact host, then the wildcard one label
// above it (*.example.com covers shop.example.com, as a certificate does),
// then routes for any host; within each, the longest path prefix first.
type routeTable struct {
	withPort  map[string]map[string][]*routeEntry // routes declaring a port, by host, then port
	exact     map[string][]*routeEntry            // by host
	wildcard  map[string][]*routeEntry            // by the domain of *.<domain>, with its dot: .example.com
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
	t := &routeTable{withPort: make(map[string]map[string][]*routeEntry),
		exact: make(map[string][]*routeEntry), wildcard: make(map[string][]*routeEntry), rejected: rejected}
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
			instances: consul.Reuse(kept[d.service+" "+d.Declaration], d.instances)}
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
	case strings.Contains(e.Host, ":"):
		host, port, _ := strings.Cut(e.Host, ":")
		if t.withPort[host] == nil {
			t.withPort[host] = make(map[string][]*routeEntry)
		}
		t.withPort[host][port] = append(t.withPort[host][port], e)
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

// match finds the route of a request to host, as in its Host header, and
// path. A host without a port is on the scheme's default port, 443 with
// TLS, else 80, as in Fabio.
func (t *routeTable) match(host string, tls bool, path string) *routeEntry {
	name := hostWithoutPort(host)
	if byPort := t.withPort[name]; byPort != nil {
		if e := longestPrefix(byPort[portOf(host, name, tls)], path); e != nil {
			return e
		}
	}
	if e := longestPrefix(t.exact[name], path); e != nil {
		return e
	}
	if e := longestPrefix(t.wildcard[parentDomain(name)], path); e != nil {
		return e
	}
	return longestPrefix(t.anyHost, path)
}

// portOf returns the port of host, a Host header whose name without the
// port is name, or else the scheme's default one.
func portOf(host, name string, tls bool) string {
	switch {
	case len(host) > len(name) && host[len(host)-1] != ']':
		return host[strings.LastIndexByte(host, ':')+1:]
	case tls:
		return "443"
	default:
		return "80"
	}
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

// inMatchOrder returns the entries in the order requests try them: hosts
// with ports, exact hosts, wildcard hosts (each by name), then any host.
func (t *routeTable) inMatchOrder() []*routeEntry {
	var out []*routeEntry
	for _, host := range slices.Sorted(maps.Keys(t.withPort)) {
		for _, port := range slices.Sorted(maps.Keys(t.withPort[host])) {
			out = append(out, t.withPort[host][port]...)
		}
	}
	for _, byHost := range []map[string][]*routeEntry{t.exact, t.wildcard} {
		for _, host := range slices.Sorted(maps.Keys(byHost)) {
			out = append(out, byHost[host]...)
		}
	}
	return append(out, t.anyHost...)
}

// allowsCertificate reports whether a route declares host by name, with
// or without a port, or by wildcard: routes for any host allow no
// certificate.
func (t *routeTable) allowsCertificate(host string) bool {
	return len(t.exact[host]) > 0 || len(t.withPort[host]) > 0 || len(t.wildcard[parentDomain(host)]) > 0
}

// parentDomain returns host without its first label, with the dot:
// .example.com for shop.example.com; empty for a single label.
func parentDomain(host string) string {
	if i := strings.IndexByte(host, '.'); i > 0 {
		return host[i:]
	}
	return ""
}
