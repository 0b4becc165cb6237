package middleware

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// provision provisions a handler in a context of its own, cancelled (as
// Caddy cancels a config's) when the test ends.
func provision(t testing.TB, h caddy.Provisioner) {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
}

// request returns a request as Caddy's server hands it to handlers: with
// variables and a replacer.
func request(method, target string) *http.Request {
	return caddyhttp.PrepareRequest(httptest.NewRequest(method, target, nil), caddy.NewReplacer(), nil, nil)
}

// answer is what a handler did with a request.
type answer struct {
	status     int
	retryAfter string
	body       string
	err        error
}

// serve runs r through h and then next, and reports the status: a Caddy
// HTTP error's, or else the response's.
func serve(h caddyhttp.MiddlewareHandler, r *http.Request, next caddyhttp.Handler) answer {
	w := httptest.NewRecorder()
	err := h.ServeHTTP(w, r, next)
	a := answer{status: w.Code, retryAfter: w.Header().Get("Retry-After"), body: w.Body.String(), err: err}
	if handlerErr, ok := err.(caddyhttp.HandlerError); ok {
		a.status = handlerErr.StatusCode
	}
	return a
}

// ok is a next handler that answers 200.
var ok = caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error {
	w.WriteHeader(http.StatusOK)
	return nil
})

// discard is a response writer that keeps nothing, for allocation counts
// and benchmarks.
type discard struct{ header http.Header }

func (d *discard) Header() http.Header {
	if d.header == nil {
		d.header = make(http.Header)
	}
	return d.header
}
func (*discard) Write(b []byte) (int, error) { return len(b), nil }
func (*discard) WriteHeader(int)             {}
