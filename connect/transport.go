package connect

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"reflect"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddymesh/caddymesh/internal/consul"
	"github.com/caddymesh/caddymesh/internal/pool"
	"github.com/caddymesh/caddymesh/internal/spiffe"
	"github.com/caddymesh/caddymesh/internal/svcname"
	"github.com/caddymesh/caddymesh/internal/validate"
)

func init() {
	caddy.RegisterModule(new(Transport))
}

// defaultHandshakeTimeout bounds a TLS handshake when tls_timeout does not.
const defaultHandshakeTimeout = 10 * time.Second

// tlsH1OnlyVar is the request variable by which Caddy's reverse_proxy asks
// its transport for HTTP/1.1 over TLS (a WebSocket upgrade).
const tlsH1OnlyVar = "reverse_proxy.tls_h1_only"

// Transport is reverse_proxy's transport into Consul's service mesh:
// Caddy's HTTP transport (keep-alive, HTTP/2, timeouts, buffers, PROXY
// protocol: every option of `transport http` but TLS, HTTP/3, h2c and
// forward proxies), over Connect's mutual TLS. It presents Service's
// current leaf certificate, trusts Consul's current Connect roots, and
// requires the server's certificate to carry the SPIFFE ID of the
// destination: its one URI SAN, spiffe://<trust-domain>/ns/<ns>/dc/<dc>/svc/<service>,
// not a host name. The destination is Destination when set, else, per
// upstream, the service the instance speaks for in Consul's Connect
// catalog (`dynamic consul <service> { connect }`). A renewed leaf or a
// rotated root is used from the next connection on.
//
// An attempt whose handshake fails (the wrong identity, no leaf from Consul
// yet) fails before any request is sent: Caddy counts it against the
// upstream's passive health and may retry it elsewhere, whatever the
// method. There is never a plaintext fallback.
type Transport struct {
	// The service this Caddy calls as: the leaf certificate it presents.
	// Required.
	Service string `json:"service,omitempty"`

	// The service every upstream must prove to be. Default: per upstream,
	// as Consul's Connect catalog says (dynamic consul with connect).
	Destination string `json:"destination,omitempty"`

	// The destination's datacenter in its SPIFFE ID. Default: this
	// service's (the datacenter of its leaf certificate).
	Datacenter string `json:"datacenter,omitempty"`

	// The destination's namespace in its SPIFFE ID. Default: default.
	Namespace string `json:"namespace,omitempty"`

	// The destination's admin partition in its SPIFFE ID. Default: this
	// service's.
	Partition string `json:"partition,omitempty"`

	// Connection settings overriding the mesh app's, field by field.
	Consul *consul.Config `json:"consul,omitempty"`

	// Caddy's HTTP transport, whose options apply as in `transport http`.
	reverseproxy.HTTPTransport

	held      *held
	base      *tls.Config   // Caddy's client TLS config: versions, ALPN, curves
	validated validate.Once // Validate's answer, for Caddy's call after Provision
}

// CaddyModule returns the Caddy module information.
func (*Transport) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.transport.connect",
		New: func() caddy.Module { return new(Transport) },
	}
}

// Provision builds Caddy's HTTP transport with Connect's TLS in place of
// its own, and takes the shared watches of the leaf and roots.
func (t *Transport) Provision(ctx caddy.Context) error {
	if err := t.Validate(); err != nil {
		return err
	}
	handshake := defaultHandshakeTimeout
	if t.TLS != nil && t.TLS.HandshakeTimeout > 0 {
		handshake = time.Duration(t.TLS.HandshakeTimeout)
	}
	t.TLS = &reverseproxy.TLSConfig{HandshakeTimeout: caddy.Duration(handshake)} // https, Caddy's ALPN
	if err := t.HTTPTransport.Provision(ctx); err != nil {
		return fmt.Errorf("transport connect: %w", err)
	}
	rt := t.HTTPTransport.Transport
	rt.Proxy = nil // mesh traffic goes to the instance, never through HTTP_PROXY
	t.base = rt.TLSClientConfig.Clone()
	rt.DialTLSContext = t.dialTLS
	var err error
	t.held, err = hold(ctx, t.Consul, t.Service)
	return err
}

// Validate rejects settings that cannot work, naming the field and value.
// Provision calls it before acting on them; its checks run once.
func (t *Transport) Validate() error { return t.validated.Do(t.check) }

// check makes Validate's checks.
func (t *Transport) check() error {
	if err := validService("transport connect", t.Service); err != nil {
		return err
	}
	if t.Destination != "" && !svcname.Valid(t.Destination) {
		return fmt.Errorf("transport connect: destination %q: not a service name", t.Destination)
	}
	if t.TLS != nil {
		rest := *t.TLS
		rest.HandshakeTimeout = 0
		if !reflect.ValueOf(rest).IsZero() {
			return errors.New("transport connect: tls: only tls_timeout applies; Connect's certificates and identities decide the rest")
		}
	}
	if t.ForwardProxyURL != "" || len(t.NetworkProxyRaw) > 0 {
		return errors.New("transport connect: forward_proxy_url, network_proxy: mesh traffic goes straight to the instance")
	}
	for _, v := range t.Versions {
		if v == "3" || v == "h2c" {
			return fmt.Errorf("transport connect: versions %s: Connect speaks HTTP/1.1 and HTTP/2 over TLS", v)
		}
	}
	return nil
}

// dialTLS connects to addr with Caddy's dialer and completes Connect's
// handshake: this service's leaf, the destination's identity.
func (t *Transport) dialTLS(ctx context.Context, network, addr string) (net.Conn, error) {
	want, err := t.destination(ctx, addr)
	if err != nil {
		return nil, reverseproxy.NewDialError(err)
	}
	conn, err := t.HTTPTransport.Transport.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err // a DialError already
	}
	cfg := t.base.Clone()
	cfg.InsecureSkipVerify = true // no host name to check: verifyServer checks the chain and the SPIFFE ID
	cfg.VerifyConnection = func(cs tls.ConnectionState) error { return t.verifyServer(cs, want, time.Now()) }
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		return t.held.certificate(time.Now())
	}
	if caddyhttp.GetVar(ctx, tlsH1OnlyVar) == true {
		cfg.NextProtos = nil
	}
	tlsConn := tls.Client(conn, cfg)
	ctx, cancel := context.WithTimeout(ctx, t.HTTPTransport.Transport.TLSHandshakeTimeout)
	defer cancel()
	if err := tlsConn.HandshakeContext(ctx); err != nil {
		_ = tlsConn.Close()
		return nil, reverseproxy.NewDialError(fmt.Errorf("connect: TLS to %s as %s: %w", addr, want, err))
	}
	return tlsConn, nil
}

// RoundTrip sends req over Connect's mutual TLS: always https, whatever
// the request's URL says, so that no request ever leaves in plaintext.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	req.URL.Scheme = "https"
	return t.HTTPTransport.Transport.RoundTrip(req)
}

// destination returns the identity the server at addr must prove, for
// the proxy attempt whose dial context ctx is.
func (t *Transport) destination(ctx context.Context, addr string) (spiffe.ServiceID, error) {
	own := t.held.leaf.current.Load()
	current := t.held.roots.current.Load()
	if own == nil || current == nil {
		return spiffe.ServiceID{}, fmt.Errorf("connect: %s: no leaf certificate and roots from Consul yet", t.Service)
	}
	if t.Destination != "" {
		return spiffe.ServiceID{
			TrustDomain: current.trustDomain,
			Partition:   cmp.Or(t.Partition, own.id.Partition),
			Namespace:   cmp.Or(t.Namespace, "default"),
			Datacenter:  cmp.Or(t.Datacenter, own.id.Datacenter),
			Service:     t.Destination,
		}, nil
	}
	dial := addr
	if info, ok := reverseproxy.GetDialInfo(ctx); ok {
		dial = info.Address
	}
	instance := pool.InstanceAt(ctx, dial)
	if instance == nil || instance.Identity == nil {
		return spiffe.ServiceID{}, fmt.Errorf("connect: upstream %s: no identity to verify: set destination, or take upstreams from `dynamic consul <service> { connect }`", dial)
	}
	want := *instance.Identity
	want.TrustDomain = current.trustDomain
	want.Partition = strings.ToLower(cmp.Or(want.Partition, "default"))
	return want, nil
}

// verifyServer checks the server's certificate chain against Consul's
// current roots, and its SPIFFE ID against want. It runs on every
// handshake, resumed ones included.
func (t *Transport) verifyServer(cs tls.ConnectionState, want spiffe.ServiceID, now time.Time) error {
	current := t.held.roots.current.Load()
	if len(cs.PeerCertificates) == 0 {
		return errors.New("connect: the server presented no certificate")
	}
	if err := current.verify(cs.PeerCertificates, x509.ExtKeyUsageServerAuth, now); err != nil {
		return fmt.Errorf("connect: the server's certificate is not from Consul's Connect CA: %w", err)
	}
	uri, err := uriSAN(cs.PeerCertificates[0])
	if err != nil {
		return fmt.Errorf("connect: the server's certificate: %w", err)
	}
	got, err := spiffe.ParseServiceID(uri)
	if err != nil || !strings.EqualFold(got.String(), want.String()) {
		return fmt.Errorf("connect: the server is %s, want %s", uri, want)
	}
	return nil
}

// Cleanup closes the idle connections and lets go of the watches.
func (t *Transport) Cleanup() error {
	t.held.release()
	return t.HTTPTransport.Cleanup()
}

// Interface guards
var (
	_ caddy.Provisioner  = (*Transport)(nil)
	_ caddy.Validator    = (*Transport)(nil)
	_ caddy.CleanerUpper = (*Transport)(nil)
	_ http.RoundTripper  = (*Transport)(nil)
)
