package urlpath_test

import (
	"bufio"
	"net/http"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddymesh/caddymesh/internal/urlpath"
)

// benchPaths are request targets: the common, already normal path, and
// paths that need work.
var benchPaths = []struct{ name, target string }{
	{"clean", "/api/v1/users/42/orders?page=2"},
	{"dot_segments", "/api/v1/../v2/./users//42"},
	{"escapes", "/api/%76%31/a%20b/%2e%2e/users"},
}

// BenchmarkNormalizeRequest measures the normalization every caddymesh
// decision on a path begins with. The peer, CaddyCleanPath, is what
// Caddy's own path matcher does to every request's path, per pattern.
func BenchmarkNormalizeRequest(b *testing.B) {
	for _, p := range benchPaths {
		wire := "GET " + p.target + " HTTP/1.1\r\nHost: example.test\r\n\r\n"
		original, err := http.ReadRequest(bufio.NewReader(strings.NewReader(wire)))
		if err != nil {
			b.Fatal(err)
		}
		b.Run("path="+p.name+"/by=caddymesh", func(b *testing.B) {
			b.ReportAllocs()
			r := original.Clone(b.Context())
			url := *r.URL
			for b.Loop() {
				*r.URL = url // each iteration normalizes the original path
				if status, err := urlpath.NormalizeRequest(nil, r, urlpath.KeepUnchanged); err != nil {
					b.Fatal(status, err)
				}
			}
		})
		b.Run("path="+p.name+"/by=CaddyCleanPath", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				caddyhttp.CleanPath(strings.ToLower(original.URL.Path), true)
			}
		})
	}
}
