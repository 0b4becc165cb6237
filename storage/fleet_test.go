package storage

import (
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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
	admin     string
}

// startFleet starts n Caddy processes sharing one HTTP port (SO_REUSEPORT)
// and a consul_kv storage, each serving on-demand TLS from Pebble on a
// port of its own.
// Pebble validates HTTP-01 on challengePort, which is the fleet's HTTP
// port unless the test puts something in between.
func startFleet(t *testing.T, n, httpPort, challengePort int) ([]gateway, *pebbletest.Pebble) {
	pebble := pebbletest.Start(t, challengePort, meshtest.FreePort())
	ask := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(ask.Close)
	prefix := "fleet/" + strconv.FormatInt(time.Now().UnixNano(), 36)
	var gateways []gateway
	for i := range n {
		admin := net.JoinHostPort("127.0.0.1", strconv.Itoa(meshtest.FreePort()))
		g := gateway{httpsPort: meshtest.FreePort(), admin: admin}
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
	httpPort := meshtest.FreePort()
	gateways, pebble := startFleet(t, 3, httpPort, httpPort)
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

// TestFleetTakesOverFromAKilledLockHolder kills, with SIGKILL, the gateway
// holding the issuance lock while Pebble validates its challenge: another
// gateway takes the lock once Consul invalidates the dead one's session
// (within twice the TTL) and finishes the certificate.
func TestFleetTakesOverFromAKilledLockHolder(t *testing.T) {
	if !*fleet {
		t.Skip("a fleet test: run with -fleet (make fleet)")
	}
	httpPort := meshtest.FreePort()
	gate := newGatedProxy(t, httpPort)
	gateways, pebble := startFleet(t, 3, httpPort, gate.port)
	// Every gateway is asked for the host at once, and keeps waiting: the
	// holder's challenge waits at the gate, the others wait for the lock.
	type answer struct {
		serial string
		err    error
	}
	answers := make([]chan answer, len(gateways))
	for i, g := range gateways {
		answers[i] = make(chan answer, 1)
		go func() {
			serial, err := g.serial(2*sessionTTL + 40*time.Second)
			answers[i] <- answer{serial, err}
		}()
	}
	select {
	case <-gate.hit:
	case <-time.After(60 * time.Second):
		t.Fatalf("pebble never validated a challenge\n%s", pebble.Log())
	}
	holder := -1
	for i, g := range gateways {
		if locks := g.issuanceLocks(t); locks > 0 {
			holder = i
		}
	}
	if holder < 0 {
		t.Fatal("no gateway holds the issuance lock while its challenge is validated")
	}
	gateways[holder].Kill()
	killed := time.Now()
	gate.open()
	var survivors []string
	for i := range gateways {
		if i == holder {
			continue
		}
		a := <-answers[i]
		if a.err != nil {
			for j, other := range gateways {
				t.Logf("gateway %d's log:\n%s", j, other.Log())
			}
			t.Fatalf("gateway %d after the holder was killed: %v\npebble:\n%s", i, a.err, pebble.Log())
		}
		survivors = append(survivors, a.serial)
	}
	took := time.Since(killed)
	t.Logf("holder %d killed; the others serve serial %s %s after", holder, survivors[0], took.Round(time.Millisecond))
	if bound := 2*sessionTTL + 5*time.Second; took > bound {
		t.Errorf("took %v after the kill, want within twice the session TTL plus 5s (%v)", took, bound)
	}
	if survivors[0] != survivors[1] {
		t.Errorf("survivors serve serials %s and %s, want one certificate", survivors[0], survivors[1])
	}
}

// issuanceLocks counts the certificate issuance locks g holds, from its
// admin API.
func (g gateway) issuanceLocks(t *testing.T) int {
	resp, err := meshtest.Client.Get("http://" + g.admin + "/mesh/storage")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var views []storageView
	if err := json.NewDecoder(resp.Body).Decode(&views); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, v := range views {
		for _, l := range v.Locks {
			if strings.HasPrefix(l.Name, "issue_cert_") {
				n++
			}
		}
	}
	return n
}

// gatedProxy forwards TCP connections to a port once opened; until then
// connections wait, and the first one is reported on hit.
type gatedProxy struct {
	port     int
	hit      chan struct{}
	opened   chan struct{}
	hitOnce  sync.Once
	openOnce sync.Once
}

func newGatedProxy(t *testing.T, target int) *gatedProxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	p := &gatedProxy{port: l.Addr().(*net.TCPAddr).Port, hit: make(chan struct{}), opened: make(chan struct{})}
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go p.forward(conn, target)
		}
	}()
	return p
}

func (p *gatedProxy) open() { p.openOnce.Do(func() { close(p.opened) }) }

func (p *gatedProxy) forward(conn net.Conn, target int) {
	defer conn.Close()
	p.hitOnce.Do(func() { close(p.hit) })
	<-p.opened
	upstream, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(target)))
	if err != nil {
		return
	}
	defer upstream.Close()
	go io.Copy(upstream, conn)
	io.Copy(conn, upstream)
}
