// Package reqkey evaluates the placeholder expressions that policies and
// handlers use as per-request keys, without allocating for the common ones.
package reqkey

import (
	"net"
	"net/http"
	"net/textproto"
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
// request header, Caddy variable (such as the client IP) or the remote
// host, are read directly, which costs no allocation; any other expression
// goes through the request's replacer.
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
