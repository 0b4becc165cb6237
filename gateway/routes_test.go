package gateway

import (
	"os"
	"strings"
	"testing"

	"github.com/caddymesh/caddymesh/internal/pool"
)

// fabio names the deliberate difference from Fabio a row shows, by the
// subject of its row in the README's table for people coming from Fabio
// (then, after a colon, what Fabio does); empty when caddymesh does what
// Fabio does.
type fabio string

// documented fails t unless the README's table for people coming from
// Fabio has a row for the difference d.
func (d fabio) documented(t *testing.T) {
	t.Helper()
	subject, _, _ := strings.Cut(string(d), ":")
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, table, _ := strings.Cut(string(readme), "### Coming from Fabio")
	table, _, _ = strings.Cut(table, "\n###")
	if d != "" && !strings.Contains(table, "\n| **"+subject+"** |") {
		t.Errorf("the README's Fabio table has no row for %q", subject)
	}
}

// TestFabioDeclarations reads the route tags of Fabio's own tests
// (registry/consul/routecmd_test.go: TestParseTag, TestRouteCmd) and of its
// documented options, without the prefix, as Fabio does; $DC is dc1.
func TestFabioDeclarations(t *testing.T) {
	for _, tc := range []struct {
		declaration string
		want        route
		err         string
		differs     fabio
	}{
		// TestParseTag
		{"", route{}, "empty route", ""}, // Fabio: no route command either
		{"/", route{Path: "/"}, "", ""},
		{" / ", route{Path: "/"}, "", ""},
		{"/foo", route{Path: "/foo"}, "", ""},
		{"bar/foo", route{Host: "bar", Path: "/foo"}, "", ""},
		{"bar/foo/foo", route{Host: "bar", Path: "/foo/foo"}, "", ""},
		{"www.bar.com/foo/foo", route{Host: "www.bar.com", Path: "/foo/foo"}, "", ""},
		{"WWW.BAR.COM/foo/foo", route{Host: "www.bar.com", Path: "/foo/foo"}, "", ""},
		{"1.1.1.1:999", route{Host: "1.1.1.1:999", Path: "/"}, "", ""},
		{"www.bar.com:80/foo redirect=302,https://www.bar.com", route{}, `option "redirect=302,https://www.bar.com" is not supported`, "options"},
		{"bar/foo a b c", route{}, `option "a" is not supported`, "options"},
		{"$x/$y", route{}, `variable "x" in "$x/$y": only $DC and ${DC} are expanded`, "variables"},
		{"${x}/${Y}", route{}, `variable "x"`, "variables"},
		{"$DC.example.com/${DC}", route{Host: "dc1.example.com", Path: "/dc1"}, "", ""},
		{"${DC}.Example.com/", route{Host: "dc1.example.com", Path: "/"}, "", ""},
		// TestRouteCmd
		{"foo/bar", route{Host: "foo", Path: "/bar"}, "", ""},
		{":1234 proto=tcp", route{}, "TCP and SNI routes are not supported", "options"},
		// The forms of Fabio's documentation, and its options
		{"/css", route{Path: "/css"}, "", ""},
		{"i.com/static", route{Host: "i.com", Path: "/static"}, "", ""},
		{"mysite.com/", route{Host: "mysite.com", Path: "/"}, "", ""},
		{"shop.example.com", route{Host: "shop.example.com", Path: "/"}, "", ""},
		{"xyz.example.com:8080/", route{Host: "xyz.example.com:8080", Path: "/"}, "", ""},
		{"xyz.example.com:0/", route{}, "a port is from 1 to 65535", ""}, // Fabio: a route no request matches
		{"*.example.com:8080/", route{}, "not a wildcard", "wildcards"},
		{"/foo/bar strip=/foo", route{Path: "/foo/bar", Strip: "/foo"}, "", ""},
		{"/bar prepend=/foo", route{Path: "/bar", Prepend: "/foo"}, "", ""},
		{"/api strip=/api prepend=/v2/", route{Path: "/api", Strip: "/api", Prepend: "/v2/"}, "", ""},
		{"/bar prepend=/a/../b", route{}, `option "prepend=/a/../b" is not supported`, ""}, // Fabio would send /a/../b/bar
		{"/bar prepend=/a%2Fb", route{}, `option "prepend=/a%2Fb" is not supported`, ""},
		{"/foo/bar proto=https", route{Path: "/foo/bar", TLS: true}, "", ""},
		{"/foo/bar proto=https tlsskipverify=true", route{Path: "/foo/bar", TLS: true, TLSSkipVerify: true}, "", ""},
		{"WWW.Example.COM/Foo", route{Host: "www.example.com", Path: "/Foo"}, "", ""},
		{"*.example.com/", route{Host: "*.example.com", Path: "/"}, "", ""},
		{"*.foo.*/", route{}, "not a host name", "wildcards"},
		{"/ host=internal.example.com", route{Path: "/", HostHeader: "internal.example.com"}, "", ""},
		{"/ host=dst", route{Path: "/", HostHeader: "dst"}, "", ""},
		{"/ proto=http", route{Path: "/"}, "", ""},
		{"/ redirect=301,https://www.foo.com$path", route{}, `option "redirect=301,https://www.foo.com$path" is not supported`, "options"},
		{"/foo allow=ip:10.0.0.0/8", route{}, `option "allow=ip:10.0.0.0/8" is not supported`, "options"},
		{"/foo deny=ip:10.0.0.0/8", route{}, `option "deny=ip:10.0.0.0/8" is not supported`, "options"},
		{"/foo auth=basic", route{}, `option "auth=basic" is not supported`, "options"},
		{"/foo register=alpha", route{}, `option "register=alpha" is not supported`, "options"},
		{"/foo weight=0.2", route{}, `option "weight=0.2" is not supported`, "options"},
		{"/foo proto=grpc", route{}, `option "proto=grpc" is not supported`, "options"},
		{"/foo tlsskipverify=true", route{}, "tlsskipverify=true without proto=https", ""}, // Fabio ignores it
		{"bad!host/foo", route{}, "not a host name", ""},
	} {
		tc.differs.documented(t)
		got, err := parseRoute(tc.declaration, "dc1")
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: error %v, want one saying %q", tc.declaration, err, tc.err)
			}
			continue
		}
		tc.want.Declaration = tc.declaration
		if err != nil || got != tc.want {
			t.Errorf("%q: %+v, %v; want %+v", tc.declaration, got, err, tc.want)
		}
	}
}

// TestFabioLookups runs the lookups of Fabio's route/table_test.go
// (TestTableLookup, TestNormalizeHost's ports) on its table, each route
// declared by a service named for the upstream port Fabio's test gives it.
func TestFabioLookups(t *testing.T) {
	rt := table(
		"800:/", "900:/foo", "1000:abc.com/", "1500:abc.com/foo", "2000:abc.com/foo/", "2500:abc.com/foo/bar",
		"3000:abc.com/foo/bar/", "3100:z.abc.com/foo/", "4000:*.abc.com/", "5000:*.abc.com/foo/",
		"6000:*.aaa.abc.com/", "6100:*.bbb.abc.com/", "xyz:xyz.com:80/",
	)
	// The route table, in the order requests try it: hosts with ports,
	// exact hosts, wildcards (by domain), any host; the longest path first.
	var order []string
	for _, e := range rt.inMatchOrder() {
		order = append(order, e.Service)
	}
	if got, want := strings.Join(order, " "), "xyz 3000 2500 2000 1500 1000 3100 6000 5000 4000 6100 900 800"; got != want {
		t.Errorf("route table %s, want %s", got, want)
	}
	for _, tc := range []struct {
		host    string
		tls     bool
		path    string
		want    string
		differs fabio // and then Fabio's answer
	}{
		// match on host and path with and without trailing slash
		{"abc.com", false, "/", "1000", ""},
		{"abc.com", false, "/bar", "1000", ""},
		{"abc.com", false, "/foo", "1500", ""},
		{"abc.com", false, "/foo/", "2000", ""},
		{"abc.com", false, "/foo/bar", "2500", ""},
		{"abc.com", false, "/foo/bar/", "3000", ""},
		// do not match on host but maybe on path
		{"def.com", false, "/", "800", ""},
		{"def.com", false, "/bar", "800", ""},
		{"def.com", false, "/foo", "900", ""},
		// default ports
		{"abc.com:80", false, "/", "1000", ""},
		{"abc.com:443", true, "/", "1000", ""},
		{"ABC.com", false, "/", "1000", ""},
		// not the default port: Fabio falls to the routes for any host
		{"abc.com:443", false, "/", "1000", "ports: 800"},
		{"abc.com:80", true, "/", "1000", "ports: 800"},
		// wildcard hosts
		{"x.abc.com", false, "/", "4000", ""},
		{"y.abc.com", false, "/abc", "4000", ""},
		{"x.abc.com", false, "/foo/", "5000", ""},
		{"y.abc.com", false, "/foo/", "5000", ""},
		{".abc.com", false, "/foo/", "900", "wildcards: 5000"},
		{"x.y.abc.com", false, "/foo/", "900", "wildcards: 5000"},
		{"y.abc.com:80", false, "/foo/", "5000", ""},
		{"x.aaa.abc.com", false, "/", "6000", ""},
		{"x.aaa.abc.com", false, "/foo", "6000", ""},
		{"x.bbb.abc.com", false, "/", "6100", ""},
		{"x.bbb.abc.com", false, "/foo", "6100", ""},
		{"y.abc.com:443", true, "/foo/", "5000", ""},
		// exact match has precedence over wildcard match
		{"z.abc.com", false, "/foo/", "3100", ""},
		// explicit port on the route
		{"xyz.com", false, "/", "xyz", ""},
		{"xyz.com:80", false, "/", "xyz", ""},
		{"xyz.com:8080", false, "/", "800", ""},
		{"xyz.com", true, "/", "800", ""},
	} {
		tc.differs.documented(t)
		e := rt.match(tc.host, tc.tls, tc.path)
		if e == nil || e.Service != tc.want {
			t.Errorf("%s%s (tls %v): matched %v, want %s", tc.host, tc.path, tc.tls, e, tc.want)
		}
	}
}

// TestFabioTables builds the tables of Fabio's route/table_test.go
// (TestTableParse) that do not need weights, which Consul's own
// (Weights.Passing) replace.
func TestFabioTables(t *testing.T) {
	for _, tc := range []struct {
		name         string
		declarations []string
		want         string // services in match order
		differs      fabio
	}{
		{"1 service, 2 prefix", []string{"a:/one", "a:/two"}, "a /one, a /two", ""},
		{"2 service, 2 prefix", []string{"a:/a", "b:/b"}, "a /a, b /b", ""},
		{"sort by more specific prefix", []string{"a:/", "b:/b"}, "b /b, a /", ""},
		{"sort prefix with host before prefix without host", []string{"a:/", "b:b.com/"}, "b b.com/, a /", ""},
		{"add more specific prefix to existing host", []string{"a:a.com/", "a:a.com/a"}, "a a.com/a, a a.com/", ""},
		{"2 service, 1 prefix", []string{"b:/", "a:/"}, "a /", "conflicts: a and b, half the traffic each"},
	} {
		tc.differs.documented(t)
		var got []string
		for _, e := range table(tc.declarations...).inMatchOrder() {
			got = append(got, e.String())
		}
		if strings.Join(got, ", ") != tc.want {
			t.Errorf("%s: table %q, want %q", tc.name, got, tc.want)
		}
	}
}

// table builds a table of declarations, service:declaration.
func table(declarations ...string) *routeTable {
	var found []declared
	for _, d := range declarations {
		service, text, _ := strings.Cut(d, ":")
		r, err := parseRoute(text, "dc1")
		if err != nil {
			panic(err)
		}
		found = append(found, declared{route: r, service: service, instances: []pool.Instance{{Dial: service + ":80"}}})
	}
	return newRouteTable(found, nil, nil)
}

func TestRouteTableMatchesHostThenLongestPrefix(t *testing.T) {
	rt := table(
		"shop:shop.example.com/",
		"assets:shop.example.com/static",
		"wild:*.example.com/",
		"api:/api",
		"root:/",
	)
	for _, tc := range []struct{ host, path, want string }{
		{"shop.example.com", "/cart", "shop"},
		{"shop.example.com", "/static/logo.png", "assets"},
		{"blog.example.com", "/", "wild"},
		{"a.b.example.com", "/", "root"}, // a wildcard covers one label, as a certificate does
		{"example.com", "/api/v1", "api"},
		{"other.org", "/apiary", "api"}, // a plain prefix, as Fabio matches
		{"other.org", "/", "root"},
	} {
		e := rt.match(tc.host, false, tc.path)
		if e == nil || e.Service != tc.want {
			t.Errorf("%s%s: matched %v, want %s", tc.host, tc.path, e, tc.want)
		}
	}
	if e := table("shop:shop.example.com/").match("other.org", false, "/"); e != nil {
		t.Errorf("no route for other.org, matched %v", e)
	}
}

func TestRouteConflictsAreResolvedByServiceNameAndReported(t *testing.T) {
	for _, order := range [][]string{
		{"beta:dup.example.com/", "alpha:dup.example.com/ strip=/x", "gamma:dup.example.com/"},
		{"gamma:dup.example.com/", "beta:dup.example.com/", "alpha:dup.example.com/ strip=/x"},
	} {
		rt := table(order...)
		if e := rt.match("dup.example.com", false, "/"); e == nil || e.Service != "alpha" {
			t.Errorf("declared in order %v: matched %v, want alpha, first by name", order, e)
		}
		if len(rt.conflicts) != 1 || rt.conflicts[0].Chosen != "alpha dup.example.com/ strip=/x" ||
			strings.Join(rt.conflicts[0].Ignored, ",") != "beta dup.example.com/,gamma dup.example.com/" {
			t.Errorf("conflicts %+v, want alpha chosen over beta and gamma", rt.conflicts)
		}
	}
}

func TestCertificatesOnlyForHostsDeclared(t *testing.T) {
	rt := table("shop:shop.example.com/", "wild:*.apps.example.com/", "any:/", "port:xyz.example.com:8080/")
	for host, want := range map[string]bool{
		"shop.example.com": true, "xyz.example.com": true, "blog.apps.example.com": true, "apps.example.com": false,
		"a.b.apps.example.com": false, "evil.com": false,
	} {
		if got := rt.allowsCertificate(host); got != want {
			t.Errorf("certificate for %s allowed: %v, want %v", host, got, want)
		}
	}
}

func TestMatchingWithPortRoutesDoesNotAllocate(t *testing.T) {
	rt := table("port:shop.example.com:8080/", "shop:shop.example.com/")
	for host, want := range map[string]string{"shop.example.com:8080": "port", "shop.example.com": "shop"} {
		if allocs := testing.AllocsPerRun(100, func() {
			if e := rt.match(host, false, "/cart"); e == nil || e.Service != want {
				t.Fatalf("%s: matched %v, want %s", host, e, want)
			}
		}); allocs != 0 {
			t.Errorf("matching %s beside a route with a port allocates %v times, want 0", host, allocs)
		}
	}
}
