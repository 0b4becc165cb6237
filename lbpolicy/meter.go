package lbpolicy

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/headers"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// meter is the transport of a reverse_proxy whose selection policy is
// least_latency: it hands every round trip to the proxy's own transport,
// and records how long each one to an upstream took, and whether it
// failed, in the policy's estimates.
//
// Caddy gives selection policies no word of how a request went; the
// transport is where the upstream (in the request's dial info), the time
// to the response headers, the status, Retry-After and connection errors
// all meet, whichever transport the proxy uses. The meter passes on the
// optional interfaces Caddy asks a transport for after the policy is
// provisioned, so the proxy behaves as with its own transport alone.
type meter struct {
	http.RoundTripper
	table *estimates
}

// measure wraps the transport of proxy in a meter. A proxy with no
// transport yet gets Caddy's default, which Caddy would make after
// provisioning the policy.
func (ll *LeastLatency) measure(ctx caddy.Context, proxy *reverseproxy.Handler) error {
	if _, measured := proxy.Transport.(*meter); measured {
		return nil
	}
	if proxy.Transport == nil {
		t := new(reverseproxy.HTTPTransport)
		if err := t.Provision(ctx); err != nil {
			return fmt.Errorf("least_latency: provisioning the default transport: %v", err)
		}
		proxy.Transport, ll.ownTransport = t, t
	}
	proxy.Transport = &meter{RoundTripper: proxy.Transport, table: ll.table}
	return nil
}

// RoundTrip makes the round trip with the proxy's transport and records
// its outcome, unless it is an active health check (which has no Caddy
// server in its context) or the client gave up first.
func (m *meter) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	dialInfo, ok := reverseproxy.GetDialInfo(ctx)
	if !ok || dialInfo.Upstream == nil || ctx.Value(caddyhttp.ServerCtxKey) == nil {
		return m.RoundTripper.RoundTrip(req)
	}
	start := clock()
	res, err := m.RoundTripper.RoundTrip(req)
	now := clock()
	e := &m.table.lookup(dialInfo.Upstream.Dial).estimate
	switch {
	case err != nil && ctx.Err() != nil:
	case err != nil:
		m.table.penalize(e, 0, now)
	case res.StatusCode == http.StatusTooManyRequests || res.StatusCode >= 500:
		m.table.penalize(e, retryAfter(res, time.Now()), now)
	default:
		m.table.observe(e, now-start, now)
	}
	return res, err
}

// retryAfter returns how long the Retry-After of a 429 or 503 response
// asks to wait (RFC 9110, section 10.2.3), or 0.
func retryAfter(res *http.Response, now time.Time) time.Duration {
	if res.StatusCode != http.StatusTooManyRequests && res.StatusCode != http.StatusServiceUnavailable {
		return 0
	}
	value := res.Header.Get("Retry-After")
	if seconds, err := strconv.ParseUint(value, 10, 32); err == nil {
		return time.Duration(seconds) * time.Second
	}
	if date, err := http.ParseTime(value); err == nil {
		return max(date.Sub(now), 0)
	}
	return 0
}

// RequestHeaderOps passes on the wrapped transport's header operations.
func (m *meter) RequestHeaderOps() *headers.HeaderOps {
	if t, ok := m.RoundTripper.(reverseproxy.RequestHeaderOpsTransport); ok {
		return t.RequestHeaderOps()
	}
	return nil
}

// ProxyProtocolEnabled reports whether the wrapped transport sends the
// PROXY protocol.
func (m *meter) ProxyProtocolEnabled() bool {
	t, ok := m.RoundTripper.(reverseproxy.ProxyProtocolTransport)
	return ok && t.ProxyProtocolEnabled()
}

// RequiresContentLength reports whether the wrapped transport needs the
// length of a request body.
func (m *meter) RequiresContentLength() bool {
	t, ok := m.RoundTripper.(reverseproxy.ContentLengthRequiredTransport)
	return ok && t.RequiresContentLength()
}

// OverrideHealthCheckScheme lets the wrapped transport set the scheme of
// active health checks.
func (m *meter) OverrideHealthCheckScheme(base *url.URL, port string) {
	if t, ok := m.RoundTripper.(reverseproxy.HealthCheckSchemeOverriderTransport); ok {
		t.OverrideHealthCheckScheme(base, port)
	}
}

// Interface guards: every optional transport interface Caddy checks after
// provisioning the selection policy.
var (
	_ reverseproxy.RequestHeaderOpsTransport           = (*meter)(nil)
	_ reverseproxy.ProxyProtocolTransport              = (*meter)(nil)
	_ reverseproxy.ContentLengthRequiredTransport      = (*meter)(nil)
	_ reverseproxy.HealthCheckSchemeOverriderTransport = (*meter)(nil)
)
