package connect_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddymesh/caddymesh/connect"
	"github.com/caddymesh/caddymesh/internal/consul"
	"github.com/caddymesh/caddymesh/internal/meshtest"
)

// BenchmarkHandshake is the fifth proof: what a new upstream
// connection costs through `transport connect` (Consul's leaf, Consul's
// roots, the SPIFFE ID checked) beside `transport http` with certificate
// files (tls_client_auth, tls_trust_pool file, tls_server_name): one
// request per connection, keep-alive off, to a Go TLS server that requires
// and verifies client certificates. "resumed" lets the client resume TLS
// sessions, which caddymesh's transport never does by default (Consul's
// proxy skips its intention check on resumed sessions): what resumption
// would save.
func BenchmarkHandshake(b *testing.B) {
	connectTransport(b, false) // holds the watches, whose first answers log, across the runs
	for _, resumed := range []bool{false, true} {
		name := map[bool]string{false: "full", true: "resumed"}[resumed]
		b.Run("transport=connect/"+name, func(b *testing.B) {
			server := connectServer(b)
			rt := connectTransport(b, resumed)
			benchmarkRoundTrips(b, rt, server.URL, resumed)
		})
		b.Run("transport=http_files/"+name, func(b *testing.B) {
			ca := meshtest.NewCA(b, "files-ca")
			server := filesServer(b, ca)
			rt := filesTransport(b, ca, resumed)
			benchmarkRoundTrips(b, rt, server.URL, resumed)
		})
	}
}

// benchmarkRoundTrips sends one GET per connection through rt.
func benchmarkRoundTrips(b *testing.B, rt http.RoundTripper, url string, resumed bool) {
	didResume := 0
	b.ReportAllocs()
	for b.Loop() {
		req, _ := http.NewRequestWithContext(context.Background(), "GET", url, nil)
		resp, err := rt.RoundTrip(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.TLS != nil && resp.TLS.DidResume {
			didResume++
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
	b.ReportMetric(float64(didResume)/float64(b.N), "resumed/op")
	if resumed && didResume == 0 || !resumed && didResume > 0 {
		b.Errorf("%d of %d handshakes resumed", didResume, b.N)
	}
}

// provisioned provisions m in a context of its own, closed at the end.
func provisioned(b *testing.B, m caddy.Provisioner) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	b.Cleanup(cancel)
	if err := m.Provision(ctx); err != nil {
		b.Fatal(err)
	}
}

var keepAliveOff = false

// connectTransport is `transport connect web { destination db; keepalive off }`.
func connectTransport(b *testing.B, resumed bool) http.RoundTripper {
	t := &connect.Transport{Service: "web", Destination: "db", Consul: &consul.Config{Address: agent.Addr},
		HTTPTransport: reverseproxy.HTTPTransport{KeepAlive: &reverseproxy.KeepAlive{Enabled: &keepAliveOff}}}
	provisioned(b, t)
	b.Cleanup(func() { _ = t.Cleanup() })
	if resumed {
		connect.EnableSessionResumption(t)
	}
	return t
}

// connectServer is db with the leaf Consul's CA issued it, verifying
// clients against Consul's roots.
func connectServer(b *testing.B) *httptest.Server {
	cert := agentLeaf(b, agent, "db")
	roots, _, err := agent.Client.Agent().ConnectCARoots(nil)
	if err != nil {
		b.Fatal(err)
	}
	pool := x509.NewCertPool()
	for _, root := range roots.Roots {
		pool.AppendCertsFromPEM([]byte(root.RootCertPEM))
	}
	return tlsServer(b, cert, pool)
}

// filesTransport is `transport http` with the files of ca's web
// certificate, ca's file, and the server name db.
func filesTransport(b *testing.B, ca *meshtest.CA, resumed bool) http.RoundTripper {
	web := ca.Service(b, "spiffe://td.consul/ns/default/dc/dc1/svc/web")
	pool, _ := json.Marshal(map[string]any{"provider": "file", "pem_files": []string{ca.File}})
	t := &reverseproxy.HTTPTransport{KeepAlive: &reverseproxy.KeepAlive{Enabled: &keepAliveOff}, TLS: &reverseproxy.TLSConfig{
		ClientCertificateFile: web.CertFile, ClientCertificateKeyFile: web.KeyFile, CARaw: pool, ServerName: "db",
	}}
	provisioned(b, t)
	b.Cleanup(func() { _ = t.Cleanup() })
	if resumed {
		t.Transport.TLSClientConfig.ClientSessionCache = tls.NewLRUClientSessionCache(64)
	}
	return t
}

// filesServer is db with ca's certificate, verifying clients against ca.
func filesServer(b *testing.B, ca *meshtest.CA) *httptest.Server {
	return tlsServer(b, ca.Service(b, "spiffe://td.consul/ns/default/dc/dc1/svc/db").Certificate, ca.Pool)
}

// tlsServer answers over TLS with cert, requiring client certificates
// that clients verifies.
func tlsServer(b *testing.B, cert tls.Certificate, clients *x509.CertPool) *httptest.Server {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: clients}
	srv.StartTLS()
	b.Cleanup(srv.Close)
	return srv
}
