package connect_test

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/caddymesh/caddymesh/internal/meshtest"
)

// TestWrongIdentityIsRefused: an upstream whose certificate is a valid
// Connect leaf of another service is refused before any request is sent;
// Caddy retries on the next upstream and counts the failure against the
// impostor's passive health.
func TestWrongIdentityIsRefused(t *testing.T) {
	db, cache := meshtest.StartBackend(t, "db"), meshtest.StartBackend(t, "cache")
	dbPort, cachePort := meshtest.FreePort(), meshtest.FreePort()
	agent.StartConnectProxy(t, "-service", "db", "-service-addr", db.Addr(), "-listen", fmt.Sprintf("127.0.0.1:%d", dbPort))
	agent.StartConnectProxy(t, "-service", "cache", "-service-addr", cache.Addr(), "-listen", fmt.Sprintf("127.0.0.1:%d", cachePort))
	only, retried := meshtest.FreePort(), meshtest.FreePort()
	meshtest.Load(t, fmt.Sprintf(`{
	%s
}
http://127.0.0.1:%d {
	reverse_proxy 127.0.0.1:%d {
		transport connect web {
			destination db
		}
	}
}
http://127.0.0.1:%d {
	reverse_proxy 127.0.0.1:%d 127.0.0.1:%d {
		lb_policy first
		lb_retries 1
		fail_duration 1m
		transport connect web {
			destination db
		}
	}
}`, globals(), only, cachePort, retried, cachePort, dbPort), "caddyfile")
	awaitStatus(t, "the impostor to be refused", "GET", fmt.Sprintf("http://127.0.0.1:%d/", only), http.StatusBadGateway)
	if got := awaitStatus(t, "the retry to reach db", "POST", fmt.Sprintf("http://127.0.0.1:%d/", retried), http.StatusOK); got != "200 db" {
		t.Errorf("with a retry: %s, want db's answer", got)
	}
	if cache.Hits.Load() != 0 {
		t.Errorf("the impostor's backend got %d requests, want none", cache.Hits.Load())
	}
	if fails := upstreamFails(t, fmt.Sprintf("127.0.0.1:%d", cachePort)); fails < 1 {
		t.Errorf("the impostor has %d fails in Caddy's passive health, want at least 1", fails)
	}
}

// upstreamFails returns the failures Caddy's passive health counts for
// the upstream at dial.
func upstreamFails(t *testing.T, dial string) int {
	t.Helper()
	resp, err := meshtest.Client.Get(meshtest.AdminURL() + "/reverse_proxy/upstreams")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var upstreams []struct {
		Address string `json:"address"`
		Fails   int    `json:"fails"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&upstreams); err != nil {
		t.Fatal(err)
	}
	for _, u := range upstreams {
		if u.Address == dial {
			return u.Fails
		}
	}
	return 0
}

// TestNoCertificateWithoutConsul: with Consul unreachable from the start,
// there is no leaf: the inbound handshake fails and outbound attempts get
// 502, never plaintext. The leaf arrives once Consul answers (the trust
// pool, read at the load, only at the next load), and stays in use while
// Consul fails.
func TestNoCertificateWithoutConsul(t *testing.T) {
	fault := meshtest.StartConsulProxy(t, agent.Addr)
	fault.Set(meshtest.ConsulFails)
	inbound, outbound, backend := meshtest.FreePort(), meshtest.FreePort(), meshtest.StartBackend(t, "plain")
	config := fmt.Sprintf(`{
	%s
	auto_https disable_redirects
	mesh {
		consul {
			address %s
		}
	}
}
%s
http://127.0.0.1:%d {
	reverse_proxy %s {
		transport connect web {
			destination db
		}
	}
}`, meshtest.Globals(), fault.Addr(), inboundSite("api", inbound, backend.Addr()), outbound, backend.Addr())
	meshtest.Load(t, config, "caddyfile")
	probe := newProbe(t, agent)
	if _, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", inbound), probe.config); err == nil {
		t.Error("inbound handshake without a leaf from Consul succeeded")
	}
	if status, body := do("GET", fmt.Sprintf("http://127.0.0.1:%d/", outbound)); status != http.StatusBadGateway || strings.Contains(body, "plain") || backend.Hits.Load() != 0 {
		t.Errorf("outbound without a leaf: %d %q, the backend got %d requests; want 502 and none", status, body, backend.Hits.Load())
	}

	fault.Set(meshtest.ConsulAnswers)
	meshtest.Eventually(t, propagation, "the inbound to present its leaf once Consul answers", func() bool {
		conn, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", inbound), probe.config)
		if err == nil {
			conn.Close()
		}
		return err == nil
	})
	fault.Set(meshtest.ConsulFails)
	for range 3 {
		conn, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", inbound), probe.config)
		if err != nil {
			t.Fatalf("with Consul failing after a leaf was held: %v", err)
		}
		conn.Close()
	}
}
