package reqkey

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func TestCompileMatchesCaddyReplacer(t *testing.T) {
	r := httptest.NewRequest(http.MethodGet, "/some/path?q=1", nil)
	r.RemoteAddr = "198.51.100.4:52011"
	vars := map[string]any{caddyhttp.ClientIPVarKey: "203.0.113.7"}
	r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, vars))
	repl := caddyhttp.NewTestReplacer(r)
	r.Header.Add("X-User", "alice")
	r.Header.Add("X-Multi", "one")
	r.Header.Add("X-Multi", "two")
	for _, key := range []string{
		ClientIP,
		"{http.request.header.X-User}",
		"{http.request.header.x-user}",
		"{http.request.header.X-Multi}",
		"{http.request.header.X-Absent}",
		"{http.request.remote.host}",
		"{http.request.uri.path}",
		"{http.request.uri.query.q}",
		"{http.request.method}{http.request.uri.path}",
		"user-{http.request.header.X-User}",
		"{http.request.uri.path.0}", "{http.request.uri.path.1}", "{http.request.uri.path.2}",
		"{http.request.host.labels.0}", "{http.request.host.labels.1}", "{http.request.host.labels.2}",
	} {
		if got, want := Compile(key)(r), repl.ReplaceAll(key, ""); got != want {
			t.Errorf("key %s evaluates to %q, Caddy's replacer to %q", key, got, want)
		}
	}
	for _, key := range []string{ClientIP, "{http.request.header.X-User}", "{http.request.remote.host}", "{http.request.uri.path.1}", "{http.request.host.labels.1}"} {
		eval := Compile(key)
		if allocs := testing.AllocsPerRun(100, func() { eval(r) }); allocs != 0 {
			t.Errorf("evaluating %s allocates %v times, want 0", key, allocs)
		}
	}
}

// TestPathSegmentsAndHostLabelsMatchCaddy compares the direct readings of
// path segments and host labels with Caddy's replacer on awkward inputs.
func TestPathSegmentsAndHostLabelsMatchCaddy(t *testing.T) {
	for _, path := range []string{"/", "", "/a", "/a/", "//a", "/a/b/c", "a/b", "/a//b"} {
		for _, host := range []string{"Example.COM", "api.example.com:8443", "[::1]:80", "::1", "localhost", "a.b.c.d", ""} {
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			r.URL.Path, r.Host = path, host
			repl := caddyhttp.NewTestReplacer(r)
			for i := range 4 {
				for _, key := range []string{fmt.Sprintf("{http.request.uri.path.%d}", i), fmt.Sprintf("{http.request.host.labels.%d}", i)} {
					if got, want := Compile(key)(r), repl.ReplaceAll(key, ""); got != want {
						t.Errorf("path %q host %q: %s evaluates to %q, Caddy's replacer to %q", path, host, key, got, want)
					}
				}
			}
		}
	}
}
