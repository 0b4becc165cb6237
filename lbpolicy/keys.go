package lbpolicy

import (
	"net/http"
	"net/textproto"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// defaultKey is the client's IP address, as Caddy determines it (it
// honours trusted_proxies).
const defaultKey = "{http.vars." + caddyhttp.ClientIPVarKey + "}"

// keyFunc evaluates a key expression for a request.
type keyFunc func(r *http.Request) string

// compileKey returns a function that evaluates the placeholder expression
// key for a request, as Caddy's replacer would. The most common keys, a
// single request header or Caddy variable such as the client IP, are read
// directly, which costs no allocation; any other expression goes through
// the request's replacer.
func compileKey(key string) keyFunc {
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
	}
	return func(r *http.Request) string {
		repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
		return repl.ReplaceAll(key, "")
	}
}
