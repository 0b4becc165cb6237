// Package urlpath normalizes request paths the way Consul's Envoy sidecars
// do, so that every caddymesh decision on a path (intentions, mesh_router,
// mesh_service) is made on the path the upstream then receives.
//
// A path is normalized as Envoy does with Consul's defaults (the mesh
// config entry's HTTP.Incoming.RequestNormalization), and with slashes
// merged:
//   - percent-encoded unreserved characters are decoded (%61 is a, %2E is .);
//   - a backslash is a slash;
//   - dot segments are removed (RFC 3986, section 5.2.4);
//   - repeated slashes are merged (Consul's MergeSlashes, off in Consul,
//     on here: Caddy's own path matcher merges them, and the merged path is
//     the one that goes upstream);
//   - escaped slashes (%2F, %5C) are handled as EscapedSlashes says;
//   - a path with an escaped NUL (%00) cannot be normalized, as in Envoy.
//
// One difference from Envoy: caddymesh, like Caddy, decides on the decoded
// path, so a path whose escaped slashes, once decoded, would make dot
// segments or empty segments (/a%2F..%2Fadmin) cannot be normalized safely
// when the escaped slashes are kept; Envoy forwards it.
package urlpath

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// EscapedSlashes is what to do with the escaped slashes of a path (%2F,
// %5C), as Consul's mesh config entry says in PathWithEscapedSlashesAction.
type EscapedSlashes uint8

// The actions, as Consul and Envoy name them.
const (
	// KeepUnchanged forwards escaped slashes as they are: Consul's
	// default (IMPLEMENTATION_SPECIFIC_DEFAULT, which Envoy takes as
	// KEEP_UNCHANGED).
	KeepUnchanged EscapedSlashes = iota
	// RejectRequest refuses a path with escaped slashes (400).
	RejectRequest
	// UnescapeAndRedirect redirects (307) a path with escaped slashes to
	// its normalized form, with the slashes unescaped; a gRPC request is
	// refused instead (400), since gRPC clients do not follow redirects.
	UnescapeAndRedirect
	// UnescapeAndForward unescapes them, then normalizes.
	UnescapeAndForward
)

// actionNames are the names Consul gives the actions, by action.
var actionNames = [...]string{
	KeepUnchanged:       "KEEP_UNCHANGED",
	RejectRequest:       "REJECT_REQUEST",
	UnescapeAndRedirect: "UNESCAPE_AND_REDIRECT",
	UnescapeAndForward:  "UNESCAPE_AND_FORWARD",
}

// ParseEscapedSlashes reads one of Consul's PathWithEscapedSlashesAction
// values. Empty and IMPLEMENTATION_SPECIFIC_DEFAULT are KEEP_UNCHANGED, as
// in Consul.
func ParseEscapedSlashes(name string) (EscapedSlashes, error) {
	if name == "" || name == "IMPLEMENTATION_SPECIFIC_DEFAULT" {
		return KeepUnchanged, nil
	}
	for action, actionName := range actionNames {
		if name == actionName {
			return EscapedSlashes(action), nil
		}
	}
	return 0, fmt.Errorf("%q: must be IMPLEMENTATION_SPECIFIC_DEFAULT, %s", name, strings.Join(actionNames[:], ", "))
}

// String returns the action's name in Consul.
func (a EscapedSlashes) String() string { return actionNames[a] }

// Why a path cannot be normalized.
var (
	// ErrNotAbsolute: the path is not empty and does not begin with a
	// slash, such as OPTIONS's *.
	ErrNotAbsolute = errors.New("the path does not begin with /")
	// ErrBadEscape: a % is not followed by two hexadecimal digits.
	ErrBadEscape = errors.New("the path has a malformed percent-encoding")
	// ErrEscapedNUL: the path has %00, which Envoy refuses too.
	ErrEscapedNUL = errors.New("the path has an escaped NUL (%00)")
	// ErrEscapedSlash: the path has an escaped slash, with RejectRequest
	// (or a gRPC request to redirect).
	ErrEscapedSlash = errors.New("the path has an escaped slash (%2F or %5C)")
	// ErrAmbiguous: with KeepUnchanged, the escaped slashes, once
	// decoded, would make dot segments or empty segments.
	ErrAmbiguous = errors.New("the path's escaped slashes (%2F, %5C) hide dot segments or empty segments")
)

// Normalize returns the normalized form of path, a percent-encoded path
// such as url.URL.EscapedPath returns, and whether it unescaped escaped
// slashes. A path already normal is returned as it is, without
// allocating.
func Normalize(path string, action EscapedSlashes) (normal string, unescaped bool, err error) {
	if path == "" {
		return "/", false, nil
	}
	if path[0] != '/' {
		return "", false, ErrNotAbsolute
	}
	if isNormal(path) {
		return path, false, nil
	}
	decoded, unescaped, err := decodeUnreserved(path, action)
	if err != nil {
		return "", false, err
	}
	normal = removeDotSegments(decoded)
	if action == KeepUnchanged && hidesSegments(normal) {
		return "", false, ErrAmbiguous
	}
	return normal, unescaped, nil
}

// isNormal reports whether Normalize would leave path, which begins with
// a slash, as it is: no escaped unreserved character, escaped slash or
// NUL, backslash, empty segment, or dot segment.
func isNormal(path string) bool {
	segment := 1 // where the current segment begins
	for i := 1; i < len(path); i++ {
		switch path[i] {
		case '/':
			if isDotOrEmpty(path[segment:i]) {
				return false
			}
			segment = i + 1
		case '%':
			if i+2 >= len(path) {
				return false
			}
			b, ok := unhex(path[i+1], path[i+2])
			if !ok || b == 0 || b == '/' || b == '\\' || isUnreserved(b) {
				return false
			}
			i += 2
		case '\\':
			return false
		}
	}
	last := path[segment:]
	return last == "" || !isDotOrEmpty(last)
}

func isDotOrEmpty(segment string) bool {
	return segment == "" || segment == "." || segment == ".."
}

// decodeUnreserved decodes path's escaped unreserved characters, turns
// backslashes into slashes, and handles escaped slashes as action says;
// other escapes are kept as they are.
func decodeUnreserved(path string, action EscapedSlashes) ([]byte, bool, error) {
	out := make([]byte, 0, len(path))
	unescaped := false
	for i := 0; i < len(path); i++ {
		c := path[i]
		switch {
		case c == '\\':
			out = append(out, '/')
		case c != '%':
			out = append(out, c)
		case i+2 >= len(path):
			return nil, false, ErrBadEscape
		default:
			d, ok := unhex(path[i+1], path[i+2])
			switch {
			case !ok:
				return nil, false, ErrBadEscape
			case d == 0:
				return nil, false, ErrEscapedNUL
			case isUnreserved(d):
				out = append(out, d)
			case (d == '/' || d == '\\') && action == RejectRequest:
				return nil, false, ErrEscapedSlash
			case (d == '/' || d == '\\') && action != KeepUnchanged:
				out = append(out, '/')
				unescaped = true
			default:
				out = append(out, path[i:i+3]...)
			}
			i += 2
		}
	}
	return out, unescaped, nil
}

// removeDotSegments resolves, in place, the dot segments of path, which
// begins with a slash, and merges repeated slashes. A path ending in a
// slash or a dot segment keeps a trailing slash, as RFC 3986 says: /a/b/..
// is /a/.
func removeDotSegments(path []byte) string {
	out := path[:0] // never longer than what was read: written in place
	trailingSlash := false
	for segment := range bytes.SplitSeq(path[1:], []byte{'/'}) {
		trailingSlash = isDotOrEmpty(string(segment))
		switch string(segment) {
		case "", ".":
		case "..":
			out = out[:max(bytes.LastIndexByte(out, '/'), 0)]
		default:
			out = append(append(out, '/'), segment...)
		}
	}
	if len(out) == 0 || trailingSlash {
		out = append(out, '/')
	}
	return string(out)
}

// hidesSegments reports whether a normalized path's escaped slashes, once
// decoded, would make dot segments or empty segments.
func hidesSegments(normal string) bool {
	if !strings.Contains(normal, "%") {
		return false
	}
	for segment := range strings.SplitSeq(normal[1:], "/") {
		pieces := splitAtEscapedSlashes(segment)
		if len(pieces) > 1 && slices.ContainsFunc(pieces, isDotOrEmpty) {
			return true
		}
	}
	return false
}

// splitAtEscapedSlashes splits a segment around its escaped slashes.
func splitAtEscapedSlashes(segment string) []string {
	var pieces []string
	start := 0
	for i := 0; i+2 < len(segment); i++ {
		if segment[i] == '%' && isEscapedSlash(segment[i+1:i+3]) {
			pieces = append(pieces, segment[start:i])
			start = i + 3
			i += 2
		}
	}
	return append(pieces, segment[start:])
}

// isEscapedSlash reports whether hex, two hexadecimal digits, encode a
// slash or a backslash.
func isEscapedSlash(hex string) bool {
	d, ok := unhex(hex[0], hex[1])
	return ok && (d == '/' || d == '\\')
}

// isUnreserved reports whether c is an unreserved character (RFC 3986,
// section 2.3).
func isUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
}

// unhex decodes two hexadecimal digits.
func unhex(hi, lo byte) (byte, bool) {
	h, ok1 := hexDigit(hi)
	l, ok2 := hexDigit(lo)
	return h<<4 | l, ok1 && ok2
}

func hexDigit(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// NormalizeRequest normalizes r's path in place, so that the handlers
// after the caller, and the upstream, see the path it decides on. When
// the path cannot be normalized it returns the status to answer with and
// why: 400; or 307, with the Location header set in header, for an
// UnescapeAndRedirect. A path already normal costs a scan and no
// allocation.
func NormalizeRequest(header http.Header, r *http.Request, action EscapedSlashes) (int, error) {
	escaped := r.URL.EscapedPath()
	normal, unescaped, err := Normalize(escaped, action)
	if err != nil {
		return http.StatusBadRequest, err
	}
	if normal == escaped {
		return 0, nil
	}
	if err := SetPath(r, normal); err != nil {
		return http.StatusBadRequest, err
	}
	if unescaped && action == UnescapeAndRedirect {
		if strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			return http.StatusBadRequest, ErrEscapedSlash
		}
		header.Set("Location", r.URL.RequestURI())
		return http.StatusTemporaryRedirect, errRedirected
	}
	return 0, nil
}

// errRedirected is why a request is answered with a redirect.
var errRedirected = errors.New("redirected to the path with its escaped slashes unescaped")

// SetPath sets r's path to escaped, a normalized path, keeping URL.Path,
// URL.RawPath and RequestURI consistent, as Caddy's rewrite handler does.
func SetPath(r *http.Request, escaped string) error {
	path, err := url.PathUnescape(escaped)
	if err != nil {
		return ErrBadEscape
	}
	r.URL.Path, r.URL.RawPath = path, ""
	if r.URL.EscapedPath() != escaped {
		r.URL.RawPath = escaped
	}
	r.RequestURI = r.URL.RequestURI()
	return nil
}
