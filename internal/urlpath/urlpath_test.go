package urlpath

import (
	"bufio"
	"errors"
	"net/http"
	"strings"
	"testing"
)

// normalizes is a path and what Normalize makes of it with each action:
// the normalized path, or the error.
type normalizes struct {
	path string
	keep string // KEEP_UNCHANGED, Consul's default
	// forward is the result with UNESCAPE_AND_FORWARD, when it differs.
	forward string
}

func checkNormalizes(t *testing.T, cases []normalizes) {
	t.Helper()
	for _, tc := range cases {
		for action, want := range map[EscapedSlashes]string{KeepUnchanged: tc.keep, UnescapeAndForward: cmpOr(tc.forward, tc.keep)} {
			got, _, err := Normalize(tc.path, action)
			if err != nil {
				got = "error: " + err.Error()
			}
			if got != want && !(strings.HasPrefix(want, "error") && strings.HasPrefix(got, "error")) {
				t.Errorf("%s %q: %q, want %q", action, tc.path, got, want)
			}
		}
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

const refused = "error"

func TestNormalizeTheIssuesCases(t *testing.T) {
	checkNormalizes(t, []normalizes{
		{path: "/public/../admin", keep: "/admin"},
		{path: "/./admin", keep: "/admin"},
		{path: "/x/%2e%2e/admin", keep: "/admin"},
		{path: "/api/../admin", keep: "/admin"},
		{path: "/x/../api/y", keep: "/api/y"},
	})
}

// Envoy's own cases (test/common/http/path_utility_test.cc: canonicalPath,
// mergeSlashes, unescapeSlashes), for absolute paths.
func TestNormalizeAsEnvoy(t *testing.T) {
	checkNormalizes(t, []normalizes{
		{path: "/xyz", keep: "/xyz"},
		{path: "/x/y/z", keep: "/x/y/z"},
		{path: "/a/b/../c", keep: "/a/c"},
		{path: "/a/b/./c", keep: "/a/b/c"},
		{path: "/a/b/../../../../c", keep: "/c"},
		{path: `/a/..\c`, keep: "/c"},
		{path: "/%c0%af", keep: "/%c0%af"},
		{path: "/a/b/%2E%2E/c", keep: "/a/c"},
		{path: "/a/b/%2E./c", keep: "/a/c"},
		{path: "/a/b/%2E/c", keep: "/a/b/c"},
		{path: "/../a/b", keep: "/a/b"},
		{path: "/./a/b", keep: "/a/b"},
		{path: "/A/B/C", keep: "/A/B/C"},
		{path: "/a/b/%2e%2e/c", keep: "/a/c"},
		{path: "/xyz/.%00../abc", keep: refused},
		{path: "/xyz/%00.%00./abc", keep: refused},
		{path: "/xyz/AAAAA%%0000/abc", keep: refused},
		// merge_slashes
		{path: "/a//b/c/", keep: "/a/b/c/"},
		{path: "/a", keep: "/a"},
		{path: "//a/b/c", keep: "/a/b/c"},
		{path: "/a//b/c", keep: "/a/b/c"},
		{path: "/a/b/c//", keep: "/a/b/c/"},
		{path: "/a///b/c", keep: "/a/b/c"},
		{path: "/a////b/c", keep: "/a/b/c"},
		// escaped slashes: Envoy keeps these with KEEP_UNCHANGED; decoded,
		// they make empty segments, so caddymesh refuses them.
		{path: "/%5c%25", keep: refused, forward: "/%25"},
		{path: "/a/%2F%2f/c", keep: refused, forward: "/a/c"},
		{path: "/a%2Fb%2fc/", keep: "/a%2Fb%2fc/", forward: "/a/b/c/"},
		{path: "/%2b", keep: "/%2b"},
	})
}

// Fabio's cases (fabiolb/fabio proxy/http_integration_test.go,
// TestProxyPathNormalization), as the path the backend reads
// (URL.Path). Fabio always unescapes %2F: caddymesh does with
// UNESCAPE_AND_FORWARD; with Consul's default it keeps them, and refuses
// the path where they hide a dot segment.
func TestNormalizeAsFabio(t *testing.T) {
	for _, tc := range []struct {
		path         string
		action       EscapedSlashes
		backendReads string // URL.Path, or the error
		upstreamGets string
	}{
		{"/foo%2Fbar", KeepUnchanged, "/foo/bar", "/foo%2Fbar"},
		{"/foo%2Fbar", UnescapeAndForward, "/foo/bar", "/foo/bar"},
		{"/foo/../bar", KeepUnchanged, "/bar", "/bar"},
		{"/foo//bar", KeepUnchanged, "/foo/bar", "/foo/bar"},
		{"/api%2F..%2Fv2//users/", KeepUnchanged, ErrAmbiguous.Error(), ""},
		{"/api%2F..%2Fv2//users/", UnescapeAndForward, "/v2/users/", "/v2/users/"},
		{"/api/users/", KeepUnchanged, "/api/users/", "/api/users/"},
	} {
		r := wireRequest(t, tc.path, "")
		if _, err := NormalizeRequest(http.Header{}, r, tc.action); err != nil {
			if err.Error() != tc.backendReads {
				t.Errorf("%s %q: %v, want %q", tc.action, tc.path, err, tc.backendReads)
			}
			continue
		}
		if r.URL.Path != tc.backendReads || r.URL.EscapedPath() != tc.upstreamGets {
			t.Errorf("%s %q: path %q sent as %q, want %q sent as %q", tc.action, tc.path, r.URL.Path, r.URL.EscapedPath(), tc.backendReads, tc.upstreamGets)
		}
	}
}

func TestNormalizeRFC3986(t *testing.T) {
	checkNormalizes(t, []normalizes{
		// RFC 3986, section 5.4: the paths of the normal and abnormal examples
		{path: "/b/c/./g", keep: "/b/c/g"},
		{path: "/b/c/g/", keep: "/b/c/g/"},
		{path: "/b/c/.", keep: "/b/c/"},
		{path: "/b/c/./", keep: "/b/c/"},
		{path: "/b/c/..", keep: "/b/"},
		{path: "/b/c/../", keep: "/b/"},
		{path: "/b/c/../g", keep: "/b/g"},
		{path: "/b/c/../..", keep: "/"},
		{path: "/b/c/../../g", keep: "/g"},
		{path: "/b/c/../../../g", keep: "/g"},
		{path: "/./g", keep: "/g"},
		{path: "/b/c/g.", keep: "/b/c/g."},
		{path: "/b/c/.g", keep: "/b/c/.g"},
		{path: "/b/c/g..", keep: "/b/c/g.."},
		{path: "/b/c/..g", keep: "/b/c/..g"},
		{path: "/b/c/./../g", keep: "/b/g"},
		{path: "/b/c/g/./h", keep: "/b/c/g/h"},
		{path: "/b/c/g/../h", keep: "/b/c/h"},
		// section 6.2.2.2: unreserved characters are decoded, others kept
		{path: "/%7Euser/%61%62c", keep: "/~user/abc"},
		{path: "/a%20b/%3F", keep: "/a%20b/%3F"},
		{path: "", keep: "/"},
		{path: "/", keep: "/"},
		{path: "*", keep: refused},
		{path: "a/b", keep: refused},
		{path: "/a%2", keep: refused},
	})
}

// Escaped slashes that hide a dot segment or an empty one, once decoded,
// are refused with Consul's default: caddymesh decides on the decoded path.
func TestNormalizeRefusesEscapedSlashesThatHideSegments(t *testing.T) {
	for _, path := range []string{"/public%2F..%2Fadmin", "/a%5C..%5Cadmin", "/a/%2E%2E%2Fadmin", "/%2F", "/a%2F%2Fb", "/x/.%2Fadmin", "/x/%2F"} {
		if _, _, err := Normalize(path, KeepUnchanged); !errors.Is(err, ErrAmbiguous) {
			t.Errorf("%q: %v, want %v", path, err, ErrAmbiguous)
		}
	}
	for _, path := range []string{"/a%2Fb", "/files/dir%2Fname/x", "/a%5Cb"} {
		if got, _, err := Normalize(path, KeepUnchanged); err != nil || got != path {
			t.Errorf("%q: %q, %v; want it kept", path, got, err)
		}
	}
}

func TestEscapedSlashesActions(t *testing.T) {
	for _, tc := range []struct {
		action   EscapedSlashes
		status   int
		path     string // as URL.Path, after
		location string
	}{
		{KeepUnchanged, 0, "/a/b", ""},
		{RejectRequest, 400, "/a%2Fb", ""},
		{UnescapeAndRedirect, 307, "/a/b", "/a/b?q=1"},
		{UnescapeAndForward, 0, "/a/b", ""},
	} {
		r := wireRequest(t, "/x/..//a%2Fb?q=1", "")
		header := http.Header{}
		status, err := NormalizeRequest(header, r, tc.action)
		if status != tc.status || (status == 0) != (err == nil) || header.Get("Location") != tc.location {
			t.Errorf("%s: %d %v, Location %q; want %d, Location %q", tc.action, status, err, header.Get("Location"), tc.status, tc.location)
		}
		if status != 400 && r.URL.Path != tc.path {
			t.Errorf("%s: path %q, want %q", tc.action, r.URL.Path, tc.path)
		}
	}
	grpc := wireRequest(t, "/a%2Fb", "application/grpc+proto")
	if status, _ := NormalizeRequest(http.Header{}, grpc, UnescapeAndRedirect); status != 400 {
		t.Errorf("a gRPC request to redirect: %d, want 400", status)
	}
}

func TestNormalizeRequestKeepsThePathConsistent(t *testing.T) {
	for _, tc := range []struct {
		target, path, rawPath, requestURI string
	}{
		{"/api/users/42?x=1", "/api/users/42", "", "/api/users/42?x=1"},
		{"/public/../admin?x=/../", "/admin", "", "/admin?x=/../"},
		{"/x/%2e%2e/%61dmin/a%20b", "/admin/a b", "", "/admin/a%20b"},
		{"/a/../b%2Fc/%3F", "/b/c/?", "/b%2Fc/%3F", "/b%2Fc/%3F"},
	} {
		r := wireRequest(t, tc.target, "")
		if status, err := NormalizeRequest(http.Header{}, r, KeepUnchanged); err != nil {
			t.Errorf("%q: %d %v", tc.target, status, err)
			continue
		}
		if r.URL.Path != tc.path || r.URL.RawPath != tc.rawPath || r.RequestURI != tc.requestURI || r.URL.RequestURI() != tc.requestURI {
			t.Errorf("%q: Path %q RawPath %q RequestURI %q (URL %q), want %q %q %q",
				tc.target, r.URL.Path, r.URL.RawPath, r.RequestURI, r.URL.RequestURI(), tc.path, tc.rawPath, tc.requestURI)
		}
	}
}

func TestNormalizeIsIdempotent(t *testing.T) {
	for _, path := range []string{"/a/./b/../c//d/", "/%7e/%2e%2e/x", "/a%2Fb/../c", `/a\b/..\c`} {
		once, _, err := Normalize(path, KeepUnchanged)
		if err != nil {
			t.Fatalf("%q: %v", path, err)
		}
		if twice, _, _ := Normalize(once, KeepUnchanged); twice != once {
			t.Errorf("%q: once %q, twice %q", path, once, twice)
		}
	}
}

func TestParseEscapedSlashes(t *testing.T) {
	for name, want := range map[string]EscapedSlashes{
		"": KeepUnchanged, "IMPLEMENTATION_SPECIFIC_DEFAULT": KeepUnchanged, "KEEP_UNCHANGED": KeepUnchanged,
		"REJECT_REQUEST": RejectRequest, "UNESCAPE_AND_REDIRECT": UnescapeAndRedirect, "UNESCAPE_AND_FORWARD": UnescapeAndForward,
	} {
		if got, err := ParseEscapedSlashes(name); err != nil || got != want {
			t.Errorf("%q: %v %v, want %v", name, got, err, want)
		}
	}
	if _, err := ParseEscapedSlashes("reject_request"); err == nil || !strings.Contains(err.Error(), `"reject_request"`) {
		t.Errorf("a name Consul does not know: %v", err)
	}
}

func TestNormalizingACleanPathDoesNotAllocate(t *testing.T) {
	r := wireRequest(t, "/api/v1/users/42/orders?page=2", "")
	allocs := testing.AllocsPerRun(100, func() {
		if status, err := NormalizeRequest(nil, r, KeepUnchanged); status != 0 || err != nil {
			t.Fatal(status, err)
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per clean request, want 0", allocs)
	}
	// The test can fail: a path to normalize allocates.
	if allocs := testing.AllocsPerRun(10, func() { Normalize("/a/../b", KeepUnchanged) }); allocs == 0 {
		t.Error("normalizing /a/../b did not allocate: is the slow path taken?")
	}
}

// wireRequest reads a GET of target as Go's server reads it off the wire.
func wireRequest(t testing.TB, target, contentType string) *http.Request {
	t.Helper()
	raw := "GET " + target + " HTTP/1.1\r\nHost: example.test\r\n"
	if contentType != "" {
		raw += "Content-Type: " + contentType + "\r\n"
	}
	r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw + "\r\n")))
	if err != nil {
		t.Fatalf("%q: %v", target, err)
	}
	return r
}
