package discovery

import (
	"strings"
	"testing"

	"github.com/caddymesh/caddymesh/internal/pool"
)

// TestFabioTagsParse reads the urlprefix- tags of Fabio's documentation
// (its quickstart and route options), without the prefix, as Fabio does.
func TestFabioTagsParse(t *testing.T) {
	for _, tc := range []struct {
		declaration string
		want        route
		err         string
	}{
		{"/css", route{Path: "/css"}, ""},
		{"i.com/static", route{Host: "i.com", Path: "/static"}, ""},
		{"mysite.com/", route{Host: "mysite.com", Path: "/"}, ""},
		{"/foo/bar strip=/foo", route{Path: "/foo/bar", Strip: "/foo"}, ""},
		{"/foo/bar proto=https", route{Path: "/foo/bar", TLS: true}, ""},
		{"/foo/bar proto=https tlsskipverify=true", route{Path: "/foo/bar", TLS: true, TLSSkipVerify: true}, ""},
		{"WWW.Example.COM/Foo", route{Host: "www.example.com", Path: "/Foo"}, ""},
		{"*.example.com/", route{Host: "*.example.com", Path: "/"}, ""},
		{"/ host=internal.example.com", route{Path: "/", HostHeader: "internal.example.com"}, ""},
		{"/ proto=http", route{Path: "/"}, ""},
		{":3306 proto=tcp", route{}, "TCP and SNI routes are not supported"},
		{"/ redirect=301,https://www.foo.com$path", route{}, `option "redirect=301,https://www.foo.com$path" is not supported`},
		{"/foo allow=ip:10.0.0.0/8", route{}, `option "allow=ip:10.0.0.0/8" is not supported`},
		{"/foo weight=0.2", route{}, `option "weight=0.2" is not supported`},
		{"/foo proto=grpc", route{}, `option "proto=grpc" is not supported`},
		{"/foo tlsskipverify=true", route{}, "tlsskipverify=true without proto=https"},
		{"bad host!/foo", route{}, "wrong"},
		{"", route{}, "empty route"},
	} {
		got, err := parseRoute(tc.declaration)
		if tc.err != "" {
			if err == nil || (tc.err != "wrong" && !strings.Contains(err.Error(), tc.err)) {
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

// table builds a table of declarations, service:declaration.
func table(declarations ...string) *routeTable {
	var found []declared
	for _, d := range declarations {
		service, text, _ := strings.Cut(d, ":")
		r, err := parseRoute(text)
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
		e := rt.match(tc.host, tc.path)
		if e == nil || e.Service != tc.want {
			t.Errorf("%s%s: matched %v, want %s", tc.host, tc.path, e, tc.want)
		}
	}
	if e := table("shop:shop.example.com/").match("other.org", "/"); e != nil {
		t.Errorf("no route for other.org, matched %v", e)
	}
}

func TestRouteConflictsAreResolvedByServiceNameAndReported(t *testing.T) {
	for _, order := range [][]string{
		{"beta:dup.example.com/", "alpha:dup.example.com/ strip=/x", "gamma:dup.example.com/"},
		{"gamma:dup.example.com/", "beta:dup.example.com/", "alpha:dup.example.com/ strip=/x"},
	} {
		rt := table(order...)
		if e := rt.match("dup.example.com", "/"); e == nil || e.Service != "alpha" {
			t.Errorf("declared in order %v: matched %v, want alpha, first by name", order, e)
		}
		if len(rt.conflicts) != 1 || rt.conflicts[0].Chosen != "alpha dup.example.com/ strip=/x" ||
			strings.Join(rt.conflicts[0].Ignored, ",") != "beta dup.example.com/,gamma dup.example.com/" {
			t.Errorf("conflicts %+v, want alpha chosen over beta and gamma", rt.conflicts)
		}
	}
}

func TestCertificatesOnlyForHostsDeclared(t *testing.T) {
	rt := table("shop:shop.example.com/", "wild:*.apps.example.com/", "any:/")
	for host, want := range map[string]bool{
		"shop.example.com": true, "blog.apps.example.com": true, "apps.example.com": false,
		"a.b.apps.example.com": false, "evil.com": false,
	} {
		if got := rt.allowsCertificate(host); got != want {
			t.Errorf("certificate for %s allowed: %v, want %v", host, got, want)
		}
	}
}
