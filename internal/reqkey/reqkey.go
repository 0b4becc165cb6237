// Package reqkey evaluates the placeholder expressions that policies and
// handlers use as per-request keys, without allocating for the common ones.
package reqkey

import (
	"net"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// ClientIP is the client's IP address, as Caddy determines it (it honours
// trusted_proxies).
const ClientIP = "{http.vars." + caddyhttp.ClientIPVarKey + "}"

// Func evaluates a key expression for a request.
type Func func(r *http.Request) string

// Compile returns a function that evaluates the placeholder expression key
// for a request, as Caddy's replacer would. The most common keys, a single
// request header, Caddy variable (such as the client IP), path segment,
// host label or the remote host, are read directly, which costs no
// allocation; any other expression goes through the request's replacer.
func Compile(key string) Func {
	name, single := strings.CutPrefix(key, "{")
	name, closed := strings.CutSuffix(name, "}")
	if single && closed && !strings.ContainsAny(name, "{}") {
		if field, ok := strings.CutPrefix(name, "http.request.header."); ok {
			field = textproto.CanonicalMIMEHeaderKey(field)
			return func(r *http.Request) string { return strings.Join(r.Header[field], ",") }
		}
		if variable, ok := strings.CutPrefix(name, "http.vars."); ok {
			return func(r *http.Request) string {
				value, _ := caddyhttp.GetVar(r.Context(), variable).(string)
				return value
			}
		}
		if index, ok := cutIndex(name, "http.request.uri.path."); ok {
			return func(r *http.Request) string { return pathSegment(r.URL.Path, index) }
		}
		if index, ok := cutIndex(name, "http.request.host.labels."); ok {
			return func(r *http.Request) string { return hostLabel(r.Host, index) }
		}
		if name == "http.request.remote.host" {
			return func(r *http.Request) string {
				host, _, err := net.SplitHostPort(r.RemoteAddr)
				if err != nil {
					return r.RemoteAddr
				}
				return host
			}
		}
	}
	return func(r *http.Request) string {
		repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
		return repl.ReplaceAll(key, "")
	}
}

// cutIndex reads name as prefix followed by a non-negative index.
func cutIndex(name, prefix string) (int, bool) {
	digits, ok := strings.CutPrefix(name, prefix)
	if !ok {
		return 0, false
	}
	index, err := strconv.Atoi(digits)
	return index, err == nil && index >= 0
}

// pathSegment is {http.request.uri.path.<index>}: the index-th segment of
// path, counted from 0 after its leading slash; empty when there is none.
func pathSegment(path string, index int) string {
	path = strings.TrimPrefix(path, "/")
	for range index {
		_, rest, found := strings.Cut(path, "/")
		if !found {
			return ""
		}
		path = rest
	}
	segment, _, _ := strings.Cut(path, "/")
	return segment
}

// hostLabel is {http.request.host.labels.<index>}: the index-th label of
// host without its port, counted from the right from 0, lower-cased.
func hostLabel(host string, index int) string {
	if strings.HasPrefix(host, "[") {
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
	} else if strings.Count(host, ":") == 1 {
		host, _, _ = strings.Cut(host, ":")
	}
	for range index {
		i := strings.LastIndexByte(host, '.')
		if i < 0 {
			return ""
		}
		host = host[:i]
	}
	return strings.ToLower(host[strings.LastIndexByte(host, '.')+1:])
}

// HasPlaceholders reports whether s holds a Caddy placeholder.
func HasPlaceholders(s string) bool {
	open := strings.IndexByte(s, '{')
	return open >= 0 && strings.IndexByte(s[open:], '}') > 0
}
