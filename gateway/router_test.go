package gateway_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddymesh/caddymesh/internal/consultest"
	"github.com/caddymesh/caddymesh/internal/meshtest"
	"github.com/caddymesh/caddymesh/internal/pebbletest"
)

// routerSite is a site served by mesh_router over the test agent.
func routerSite(port int, options string) string {
	return fmt.Sprintf(`:%d {
	mesh_router {
		%s
		consul {
			address %s
		}
	}
	respond "next"
}
`, port, options, agent.Addr)
}

// routeTableView is a table as /mesh/routes shows it.
type routeTableView struct {
	Routes []struct {
		Host, Path, Service, Declaration string
		Instances                        []string
	}
	Conflicts []struct {
		Host, Path, Chosen string
		Ignored            []string
	}
	Rejected []struct{ Service, Declaration, Reason string }
}

// routeTables returns what /mesh/routes says.
func routeTables(t *testing.T) []routeTableView {
	var tables []routeTableView
	adminGet(t, http.MethodGet, "/mesh/routes", &tables)
	return tables
}

// expectRoutes waits until each request, host and path, gets its answer:
// "404", or the body the application answers.
func expectRoutes(t *testing.T, base string, want map[[2]string]string) {
	t.Helper()
	var wrong []string
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(strings.Join(wrong, "\n"))
		}
	})
	meshtest.Eventually(t, propagation, "the routes to serve", func() bool {
		wrong = wrong[:0]
		for request, answer := range want {
			status, body := get(base+request[1], request[0])
			if got := fmt.Sprint(status); (answer == "404" && got != "404") || (answer != "404" && body != answer) {
				wrong = append(wrong, fmt.Sprintf("%s%s: %d %q, want %s", request[0], request[1], status, body, answer))
			}
		}
		return len(wrong) == 0
	})
}

func TestRouterServesRoutesDeclaredInConsul(t *testing.T) {
	routed, fallthrough_ := meshtest.FreePort(), meshtest.FreePort()
	meshtest.Load(t, fmt.Sprintf("{\n\t%s\n}\n", meshtest.Globals())+
		routerSite(routed, "meta_prefix caddy-route")+
		routerSite(fallthrough_, "require_tag edge\n\t\tfallback next"), "caddyfile")
	base := fmt.Sprintf("http://127.0.0.1:%d", routed)

	registerEcho(t, "rt-shop", "shop-1", []string{"urlprefix-shop.test/"}, nil)
	registerEcho(t, "rt-assets", "assets-1", []string{"urlprefix-shop.test/static"}, nil)
	registerEcho(t, "rt-api", "api-1", []string{"urlprefix-/api strip=/api", "edge"}, nil)
	registerEcho(t, "rt-meta", "meta-1", nil, map[string]string{"caddy-route-1": "meta.test/ strip=/", "caddy-route": "meta.test/v0"})
	expectRoutes(t, base, map[[2]string]string{
		{"shop.test", "/cart"}:         "shop-1 /cart",
		{"shop.test:8443", "/cart"}:    "shop-1 /cart",
		{"SHOP.test", "/static/a.png"}: "assets-1 /static/a.png",
		{"other.test", "/api/v1/x"}:    "api-1 /v1/x",
		{"meta.test", "/x"}:            "meta-1 /x",
		{"meta.test", "/v0/y"}:         "meta-1 /v0/y",
		{"other.test", "/cart"}:        "404",
	})
	// require_tag edge: only rt-api; fallback next: the rest goes on.
	expectRoutes(t, fmt.Sprintf("http://127.0.0.1:%d", fallthrough_), map[[2]string]string{
		{"other.test", "/api/v1"}: "api-1 /v1",
		{"shop.test", "/cart"}:    "next",
	})

	// No reload: a new instance declaring a route is served, a
	// deregistered one is not.
	registerEcho(t, "rt-blog", "blog-1", []string{"urlprefix-blog.test/"}, nil)
	agent.Deregister(t, "rt-shop-shop-1")
	expectRoutes(t, base, map[[2]string]string{
		{"blog.test", "/post"}: "blog-1 /post",
		{"shop.test", "/cart"}: "404",
	})

	// Unloaded, the routers stop, and so do their watches.
	if n := meshtest.Goroutines("gateway.(*Router).run"); n != 2 {
		t.Errorf("%d routers running, want 2", n)
	}
	meshtest.Load(t, fmt.Sprintf("{\n\t%s\n}\n:%d {\n\trespond ok\n}\n", meshtest.Globals(), routed), "caddyfile")
	meshtest.Eventually(t, propagation, "the routers and their watches to stop", func() bool {
		return meshtest.Goroutines("gateway.(*Router).run") == 0 && meshtest.Goroutines(watchLoop) == 0
	})
	if tables := routeTables(t); len(tables) != 0 {
		t.Errorf("/mesh/routes lists %d tables with no router running", len(tables))
	}
}

func TestRouterReportsConflictsAndRejectedDeclarations(t *testing.T) {
	p := meshtest.FreePort()
	meshtest.Load(t, fmt.Sprintf("{\n\t%s\n}\n", meshtest.Globals())+routerSite(p, ""), "caddyfile")
	registerEcho(t, "rc-beta", "beta-1", []string{"urlprefix-dup.test/"}, nil)
	registerEcho(t, "rc-alpha", "alpha-1", []string{"urlprefix-dup.test/", "urlprefix-/old redirect=301,https://new.test/"}, nil)
	expectRoutes(t, fmt.Sprintf("http://127.0.0.1:%d", p), map[[2]string]string{{"dup.test", "/"}: "alpha-1 /"})

	// rc-alpha's route may serve before the router has seen rc-beta's
	// instance pass: wait until it has (a conflict to report), then check.
	var tables []routeTableView
	meshtest.Eventually(t, propagation, "the table to see both declarations of dup.test/", func() bool {
		tables = routeTables(t)
		return len(tables) != 1 || len(tables[0].Conflicts) > 0
	})
	if len(tables) != 1 {
		t.Fatalf("%d route tables, want 1", len(tables))
	}
	tb := tables[0]
	if len(tb.Conflicts) != 1 || tb.Conflicts[0].Chosen != "rc-alpha dup.test/" || strings.Join(tb.Conflicts[0].Ignored, ",") != "rc-beta dup.test/" {
		t.Errorf("conflicts %+v, want rc-alpha chosen over rc-beta", tb.Conflicts)
	}
	if len(tb.Rejected) != 1 || tb.Rejected[0].Service != "rc-alpha" || !strings.Contains(tb.Rejected[0].Reason, "redirect") {
		t.Errorf("rejected %+v, want rc-alpha's redirect", tb.Rejected)
	}
	if len(tb.Routes) != 1 || tb.Routes[0].Service != "rc-alpha" || len(tb.Routes[0].Instances) != 1 {
		t.Errorf("routes %+v, want rc-alpha's, with its instance", tb.Routes)
	}
}

func TestRouterDialsHTTPSUpstreams(t *testing.T) {
	ca := meshtest.NewCA(t, "upstream-ca")
	secure := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "secure %s tls=%v", r.URL.Path, r.TLS != nil)
	}))
	secure.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Server(t).Certificate}}
	secure.StartTLS()
	t.Cleanup(secure.Close)
	port := secure.Listener.Addr().(*net.TCPAddr).Port
	agent.Register(t, consultest.Instance{Service: "rt-secure", ID: "rt-secure-1", Port: port,
		Tags: []string{"urlprefix-secure.test/ proto=https", "urlprefix-insecure.test/ proto=https tlsskipverify=true"}})
	t.Cleanup(func() { agent.Client.Agent().ServiceDeregister("rt-secure-1") })

	p := meshtest.FreePort()
	meshtest.Load(t, fmt.Sprintf("{\n\t%s\n}\n", meshtest.Globals())+routerSite(p, fmt.Sprintf(`proxy {
			transport http {
				tls_trust_pool file %s
			}
		}`, ca.File)), "caddyfile")
	expectRoutes(t, fmt.Sprintf("http://127.0.0.1:%d", p), map[[2]string]string{
		{"secure.test", "/a"}:   "secure /a tls=true",
		{"insecure.test", "/b"}: "secure /b tls=true",
	})
}

// loadOnDemandRouter loads a Caddy that serves mesh_router on httpsPort
// over on-demand TLS allowed by permission mesh, with the global options
// and sites given.
func loadOnDemandRouter(t *testing.T, httpsPort int, globals, sites string) {
	meshtest.Load(t, fmt.Sprintf(`{
	%s
	%s
	on_demand_tls {
		permission mesh
	}
}
https://:%d {
	tls {
		on_demand
	}
	mesh_router {
		consul {
			address %s
		}
	}
}
%s`, meshtest.Globals(), globals, httpsPort, agent.Addr, sites), "caddyfile")
}

// TestRouterHostsGetCertificatesOnDemand serves mesh_router over on-demand
// TLS with certificates from Pebble, which validates its challenges for
// real on Caddy's own ports (HTTP-01 on the HTTP port, TLS-ALPN-01 on the
// HTTPS one; Caddy chooses): a host a service declares gets a certificate
// at its first handshake, an undeclared one gets none and Pebble sees no
// order, and a host declared later gets one with no reload.
func TestRouterHostsGetCertificatesOnDemand(t *testing.T) {
	httpPort, httpsPort := meshtest.FreePort(), meshtest.FreePort()
	pebble := pebbletest.Start(t, httpPort, httpsPort)
	loadOnDemandRouter(t, httpsPort, fmt.Sprintf(`storage file_system %s
	http_port %d
	acme_ca %s
	acme_ca_root %s`, t.TempDir(), httpPort, pebble.Directory, pebble.RootFile), "")
	// Hosts of this run only: Caddy's certificate cache outlives a config,
	// and would serve another run's certificates (with -count).
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	declared, later := "ondemand-"+run+".test", "later-"+run+".test"
	registerEcho(t, "rt-ondemand", "ondemand-1", []string{"urlprefix-" + declared + "/"}, nil)
	meshtest.Eventually(t, propagation, "the route to be declared", func() bool {
		tables := routeTables(t)
		return len(tables) == 1 && len(tables[0].Routes) == 1
	})
	client := tlsClient(t, pebble.Roots(t), httpsPort)

	if names := issuedBy(t, pebble, client, declared, "ondemand-1 /"); !slices.Equal(names, []string{declared}) {
		t.Errorf("the declared host was served a certificate for %v", names)
	}
	if orders := pebble.Orders(); orders != 1 {
		t.Errorf("pebble took %d orders for one declared host, want 1", orders)
	}
	if status, body := fetch(client, "https://"+later+"/"); status != 0 || !strings.Contains(body, "tls") {
		t.Fatalf("undeclared host answered %d %q, want no certificate", status, body)
	}
	if orders := pebble.Orders(); orders != 1 {
		t.Errorf("pebble took %d orders after a handshake for an undeclared host, want still 1", orders)
	}

	// Declared later, with no reload, the host gets its certificate.
	registerEcho(t, "rt-later", "later-1", []string{"urlprefix-" + later + "/"}, nil)
	meshtest.Eventually(t, propagation, "a certificate for the host declared later", func() bool {
		_, body := fetch(client, "https://"+later+"/")
		return body == "later-1 /"
	})
	if names := issuedBy(t, pebble, client, later, "later-1 /"); !slices.Equal(names, []string{later}) {
		t.Errorf("the host declared later was served a certificate for %v", names)
	}
	if orders, issued := pebble.Orders(), pebble.Serials(); orders != 2 || len(issued) != 2 {
		t.Errorf("pebble took %d orders and issued %q for two declared hosts, want two of each", orders, issued)
	}
}

// issuedBy GETs https://host/ with client, which trusts pebble's root,
// expecting body, waits until pebble's log shows it issued the serial
// served, and returns the names of the certificate.
func issuedBy(t *testing.T, pebble *pebbletest.Pebble, client *http.Client, host, body string) []string {
	t.Helper()
	resp, err := client.Get("https://" + host + "/")
	if err != nil {
		t.Fatalf("%s: %v\npebble:\n%s", host, err, pebble.Log())
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || string(got) != body {
		t.Errorf("%s answered %q %v, want %q", host, got, err, body)
	}
	// Pebble logs the serial before it answers, but its log reaches the
	// test through a pipe.
	serial := hex.EncodeToString(resp.TLS.PeerCertificates[0].SerialNumber.Bytes())
	meshtest.Eventually(t, propagation, host+"'s serial "+serial+" in pebble's log", func() bool {
		return slices.Contains(pebble.Serials(), serial)
	})
	return resp.TLS.PeerCertificates[0].DNSNames
}

// TestRouterWildcardHostsGetTheSiteCertificate serves a wildcard route
// under a site that has a wildcard certificate: its hosts are served that
// certificate, and nothing is obtained per host. It runs on Caddy's
// internal issuer, as an ACME CA issues a wildcard certificate only over
// the DNS-01 challenge, which the test's DNS server does not answer.
func TestRouterWildcardHostsGetTheSiteCertificate(t *testing.T) {
	storage, httpsPort := t.TempDir(), meshtest.FreePort()
	loadOnDemandRouter(t, httpsPort, fmt.Sprintf(`storage file_system %s
	http_port %d
	local_certs
	skip_install_trust`, storage, meshtest.FreePort()), fmt.Sprintf(`*.wild.test:%d {
	mesh_router {
		consul {
			address %s
		}
	}
}
`, httpsPort, agent.Addr))
	client := internalTLSClient(t, storage, httpsPort)
	registerEcho(t, "rt-wild", "wild-1", []string{"urlprefix-*.wild.test/"}, nil)
	meshtest.Eventually(t, propagation, "the wildcard route", func() bool {
		_, body := fetch(client, "https://a.wild.test/x")
		return body == "wild-1 /x"
	})
	resp, err := client.Get("https://b.wild.test/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if names := resp.TLS.PeerCertificates[0].DNSNames; !slices.Equal(names, []string{"*.wild.test"}) {
		t.Errorf("b.wild.test was served a certificate for %v, want the site's *.wild.test", names)
	}
}

// internalTLSClient is tlsClient trusting the root of Caddy's internal
// CA, kept in storage.
func internalTLSClient(t *testing.T, storage string, port int) *http.Client {
	roots := x509.NewCertPool()
	root, err := os.ReadFile(filepath.Join(storage, "pki", "authorities", "local", "root.crt"))
	if err != nil || !roots.AppendCertsFromPEM(root) {
		t.Fatalf("Caddy's internal root: %v", err)
	}
	return tlsClient(t, roots, port)
}

// tlsClient is a client that trusts roots and sends every request to the
// HTTPS port, on loopback, whatever the host.
func tlsClient(t *testing.T, roots *x509.CertPool, port int) *http.Client {
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots},
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return new(net.Dialer).DialContext(ctx, "tcp", fmt.Sprintf("127.0.0.1:%d", port))
		},
	}}
	t.Cleanup(client.CloseIdleConnections)
	return client
}

// fetch GETs url with client, and returns the status and body, or the
// error.
func fetch(client *http.Client, url string) (int, string) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, err.Error()
	}
	return meshtest.Do(client, req)
}

// TestGatewayCaddyfileExample runs examples/gateway.Caddyfile with Caddy's
// internal issuer instead of Let's Encrypt, on free ports.
func TestGatewayCaddyfileExample(t *testing.T) {
	t.Setenv("CONSUL_HTTP_ADDR", agent.Addr)
	storage, httpsPort := t.TempDir(), meshtest.FreePort()
	example := string(mustReadFile(t, "../examples/gateway.Caddyfile"))
	example = strings.Replace(example, "\n{\n", fmt.Sprintf(`
{
	%s
	storage file_system %s
	http_port %d
	https_port %d
	local_certs
	skip_install_trust
`, meshtest.Globals(), storage, meshtest.FreePort(), httpsPort), 1)
	registerEcho(t, "greeter", "greeter-1", nil, nil)
	registerEcho(t, "billing", "billing-1", nil, nil)
	registerEcho(t, "shop", "shop-1", nil, map[string]string{"caddy-route": "shop.example.com/"})
	meshtest.Load(t, example, "caddyfile")
	client := internalTLSClient(t, storage, httpsPort)

	meshtest.Eventually(t, propagation, "the services and the route to be served", func() bool {
		_, greeter := fetch(client, "https://api.example.com/greeter/hello")
		_, shop := fetch(client, "https://shop.example.com/cart")
		return greeter == "greeter-1 /hello" && shop == "shop-1 /cart"
	})
	if status, body := fetch(client, "https://api.example.com/billing/invoices"); status != http.StatusNotFound {
		t.Errorf("a service not allowed answered %d %q", status, body)
	}
	if status, body := fetch(client, "https://evil.example.com/"); status != 0 || !strings.Contains(body, "tls") {
		t.Errorf("a host no service declares answered %d %q, want no certificate", status, body)
	}
}

// TestRouterRefusesLeastLatency pins what the README says: least_latency
// cannot find mesh_router's proxies to measure, and the load says so.
func TestRouterRefusesLeastLatency(t *testing.T) {
	site := routerSite(meshtest.FreePort(), "proxy {\n\t\t\tlb_policy least_latency\n\t\t}")
	got := meshtest.LoadError(t, fmt.Sprintf("{\n\t%s\n}\n", meshtest.Globals())+site, "caddyfile")
	if !strings.Contains(got, "least_latency: must be the selection policy of a reverse_proxy") {
		t.Errorf("load error %q, want least_latency's", got)
	}
}
