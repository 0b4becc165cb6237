package discovery

import (
	"io"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(ChainResponseHeaders{})
}

// chainHeadersVar is the request variable mesh_chain sets, so that a
// source with chain knows whether the response header actions it chooses
// will be done.
const chainHeadersVar = "mesh.chain_headers"

// responseHeadersWithoutHandler is what the admin API and the log say of
// response header actions chosen for requests without mesh_chain.
const responseHeadersWithoutHandler = "ResponseHeaders of a route or split: requests came without the mesh_chain handler in front of reverse_proxy, which does them"

// ChainResponseHeaders does the response header actions (ResponseHeaders
// of a service-router route or service-splitter split) of the discovery
// chain leg that a consul source with chain chose for the request: an
// upstream source can change the request Caddy sends upstream, not the
// response. Put it in front of the reverse_proxy, in the same route;
// without a chain leg, the response is left as it is. Syntax: mesh_chain
// (no options).
type ChainResponseHeaders struct{}

// CaddyModule returns the Caddy module information.
func (ChainResponseHeaders) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.mesh_chain",
		New: func() caddy.Module { return new(ChainResponseHeaders) },
	}
}

// ServeHTTP lets the next handlers answer, doing the leg's response header
// actions when the response's header is written.
func (ChainResponseHeaders) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	caddyhttp.SetVar(r.Context(), chainHeadersVar, true)
	return next.ServeHTTP(&chainResponseWriter{ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: w}, r: r}, r)
}

// chainResponseWriter does the response header actions of the request's
// chain leg, the split's then the route's, when the final header is
// written.
type chainResponseWriter struct {
	caddyhttp.ResponseWriterWrapper
	r       *http.Request
	written bool
}

// WriteHeader does the actions before the final (not 1xx) header.
func (w *chainResponseWriter) WriteHeader(status int) {
	if !w.written && (status >= http.StatusOK || status == http.StatusSwitchingProtocols) {
		w.written = true
		if leg, ok := caddyhttp.GetVar(w.r.Context(), chainLegVar).(*chainLeg); ok {
			leg.response.applyToHeader(w.Header(), nil)
			leg.route.response.applyToHeader(w.Header(), nil)
		}
	}
	w.ResponseWriterWrapper.WriteHeader(status)
}

// Write writes the header first, if no one did.
func (w *chainResponseWriter) Write(b []byte) (int, error) {
	if !w.written {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriterWrapper.Write(b)
}

// ReadFrom writes the header first, if no one did.
func (w *chainResponseWriter) ReadFrom(r io.Reader) (int64, error) {
	if !w.written {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriterWrapper.ReadFrom(r)
}

// Interface guards
var (
	_ caddyhttp.MiddlewareHandler = ChainResponseHeaders{}
	_ io.ReaderFrom               = (*chainResponseWriter)(nil)
)
