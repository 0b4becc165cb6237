package storage

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddymesh/caddymesh/internal/meshtest"
	"github.com/caddymesh/caddymesh/internal/pebbletest"
)

// certLifetime is how long Pebble's certificates are valid in
// TestFleetRenewsAfterAConsulOutage; with renewal_window_ratio 0.9, Caddy
// wants to renew one a tenth of the way through its life (15 s), long
// before it expires.
const certLifetime = 150 * time.Second

// TestFleetRenewsAfterAConsulOutage makes Consul fail every request while a
// gateway holds a certificate that it wants to renew: the certificate it
// loaded keeps being served (Caddy's cache), each renewal check fails on
// the storage and the next one retries, and once Consul answers again a
// retry renews it through Pebble, for real.
func TestFleetRenewsAfterAConsulOutage(t *testing.T) {
	if !*fleet {
		t.Skip("a fleet test: run with -fleet (make fleet)")
	}
	consul := meshtest.StartConsulProxy(t, agent.Addr)
	httpPort := meshtest.FreePort()
	pebble := pebbletest.Start(t, httpPort, meshtest.FreePort(), pebbletest.ValidFor(certLifetime))
	g := startRenewingGateway(t, consul.Addr(), pebble, httpPort)

	first, err := g.serial(60 * time.Second)
	if err != nil {
		t.Fatalf("first certificate: %v\npebble:\n%s", err, pebble.Log())
	}
	consul.Set(meshtest.ConsulFails)
	// Each renewal check fails on the storage, naming the operation and the
	// key, and the next check (every second) tries again.
	failedRenewals := func() int { return strings.Count(g.Log(), "consul_kv: load") }
	deadline := time.Now().Add(certLifetime / 2)
	for failedRenewals() < 3 {
		if time.Now().After(deadline) {
			t.Fatal("fewer than 3 failed renewal checks logged while Consul fails")
		}
		time.Sleep(200 * time.Millisecond)
	}
	for range 3 {
		if serial, err := g.serial(5 * time.Second); err != nil || serial != first {
			t.Fatalf("while Consul fails: serial %s, %v; want the loaded certificate %s", serial, err, first)
		}
	}
	if strings.Contains(g.Log(), "token") {
		t.Errorf("the gateway's log mentions a token:\n%s", g.Log())
	}
	consul.Set(meshtest.ConsulAnswers)
	back := time.Now()

	renewed, deadline := first, back.Add(certLifetime)
	for renewed == first {
		if time.Now().After(deadline) {
			t.Fatalf("not renewed %v after Consul came back\n%s\npebble:\n%s", certLifetime, g.Log(), pebble.Log())
		}
		time.Sleep(time.Second)
		if renewed, err = g.serial(5 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if issued := pebble.Serials(); len(issued) != 2 {
		t.Errorf("pebble issued %q, want the first certificate and its renewal", issued)
	}
	t.Logf("served %s through the outage (%d failed renewal checks logged), renewed to %s %v after Consul came back",
		first, failedRenewals(), renewed, time.Since(back).Round(time.Second))
}

// startRenewingGateway starts a Caddy process with consul_kv storage on
// consul that manages a certificate for fleet.test from pebble, checking
// for renewal every second.
func startRenewingGateway(t *testing.T, consul string, pebble *pebbletest.Pebble, httpPort int) gateway {
	admin := net.JoinHostPort("127.0.0.1", strconv.Itoa(meshtest.FreePort()))
	g := gateway{httpsPort: meshtest.FreePort(), admin: admin}
	caddyfile := filepath.Join(t.TempDir(), "Caddyfile")
	err := os.WriteFile(caddyfile, fmt.Appendf(nil, `{
	admin %s
	persist_config off
	http_port %d
	https_port %d
	renew_interval 1s
	renewal_window_ratio 0.9
	storage consul_kv {
		prefix renewing/%d
		consul {
			address %s
		}
	}
}

fleet.test {
	tls {
		issuer acme {
			dir %s
			trusted_roots %s
			disable_tlsalpn_challenge
		}
	}
	respond "renewing gateway"
}
`, admin, httpPort, g.httpsPort, time.Now().UnixNano(), consul, pebble.Directory, pebble.RootFile), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	g.CaddyProcess = meshtest.StartCaddy(t, caddyfile, admin)
	return g
}
