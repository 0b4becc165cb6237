package storage

import (
	"crypto/tls"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	"github.com/caddymesh/caddymesh/internal/meshtest"
	"github.com/caddymesh/caddymesh/internal/pebbletest"
)

// fleet selects the fleet tests: Caddy processes and Pebble, tens of
// seconds; `make fleet` runs them.
var fleet = flag.Bool("fleet", false, "run the fleet tests against Pebble (make fleet)")

// gateway is a Caddy process of the fleet, with its own HTTPS port.
type gateway struct {
	*meshtest.CaddyProcess
	httpsPort int
}

// startFleet starts n Caddy processes sharing one HTTP port (SO_REUSEPORT)
// and a consul_kv storage, each serving on-demand TLS from Pebble on a
// port of its own.
func startFleet(t *testing.T, n int) ([]gateway, *pebbletest.Pebble) {
	httpPort := meshtest.FreePort()
	pebble := pebbletest.Start(t, httpPort, meshtest.FreePort())
	ask := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(ask.Close)
	prefix := "fleet/" + strconv.FormatInt(time.Now().UnixNano(), 36)
	var gateways []gateway
	for i := range n {
		g := gateway{httpsPort: meshtest.FreePort()}
		admin := net.JoinHostPort("127.0.0.1", strconv.Itoa(meshtest.FreePort()))
		caddyfile := filepath.Join(t.TempDir(), "Caddyfile")
		err := os.WriteFile(caddyfile, fmt.Appendf(nil, `{
	admin %s
	persist_config off
	http_port %d
	https_port %d
	on_demand_tls {
		ask %s
	}
	storage consul_kv {
		prefix %s
		consul {
			address %s
		}
	}
}

fleet.test {
	tls {
		on_demand
		issuer acme {
			dir %s
			trusted_roots %s
			disable_tlsalpn_challenge
		}
	}
	respond "gateway %d"
}
`, admin, httpPort, g.httpsPort, ask.URL, prefix, agent.Addr, pebble.Directory, pebble.RootFile, i), 0o600)
		if err != nil {
			t.Fatal(err)
		}
		g.CaddyProcess = meshtest.StartCaddy(t, caddyfile, admin)
		gateways = append(gateways, g)
	}
	return gateways, pebble
}

// serial makes a TLS handshake for fleet.test with g, retrying until it
// succeeds or timeout, and returns the certificate's serial number.
func (g gateway) serial(timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: timeout}, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(g.httpsPort)),
			&tls.Config{ServerName: "fleet.test", InsecureSkipVerify: true})
		if err == nil {
			defer conn.Close()
			return fmt.Sprintf("%x", conn.ConnectionState().PeerCertificates[0].SerialNumber), nil
		}
		if time.Now().After(deadline) {
			return "", err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestFleetOrdersOnceAndServesOneCertificate asks three gateways sharing
// consul_kv for the same host at the same moment: Pebble takes one order,
// validated for real over HTTP-01, and all three serve its certificate.
func TestFleetOrdersOnceAndServesOneCertificate(t *testing.T) {
	if !*fleet {
		t.Skip("a fleet test: run with -fleet (make fleet)")
	}
	gateways, pebble := startFleet(t, 3)
	serials := make([]string, len(gateways))
	errs := make([]error, len(gateways))
	var wg sync.WaitGroup
	for i, g := range gateways {
		wg.Go(func() { serials[i], errs[i] = g.serial(60 * time.Second) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("gateway %d: handshake: %v\n%s\npebble:\n%s", i, err, gateways[i].Log(), pebble.Log())
		}
	}
	if orders, issued := pebble.Orders(), pebble.Serials(); orders != 1 || len(issued) != 1 {
		t.Fatalf("pebble took %d orders and issued %q, want one order and one certificate\n%s", orders, issued, pebble.Log())
	}
	for i, serial := range serials {
		if serial != serials[0] {
			t.Errorf("gateway %d serves serial %s, gateway 0 %s", i, serial, serials[0])
		}
	}
	t.Logf("one order; all three serve serial %s", serials[0])
}
