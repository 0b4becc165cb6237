package connect_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/caddymesh/caddymesh/internal/consultest"
	"github.com/caddymesh/caddymesh/internal/loadgen"
	"github.com/caddymesh/caddymesh/internal/meshtest"
)

// Each direction's load, in requests a second: most on kept-alive
// connections, some on a new connection each, so that new handshakes run
// all along (a handshake per request at the full rate would measure the
// machine's CPU, not the rotation).
const (
	keptAliveRate = 190
	freshRate     = 10
)

// TestCARotationUnderLoad is the fourth proof: Consul's CA is
// rotated (a new key: a new root, cross-signed by the old) while traffic
// flows both ways: web's sidecar (Consul's proxy) calling api behind
// caddymesh, and caddymesh calling db behind its sidecar (Consul's proxy).
// No request fails, and caddymesh uses each new leaf as soon as Consul's
// agent gives it (the agent spreads its re-signing over 30 s), with no
// reload: the inbound trust pool, read at the load, still verifies the
// callers' new leaves, through the cross-signed root they carry.
func TestCARotationUnderLoad(t *testing.T) {
	ca, err := consultest.Start(consultest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ca.Stop)
	inbound, upstream, sidecarPort := meshtest.FreePort(), meshtest.FreePort(), meshtest.FreePort()
	outbound, outboundFresh := meshtest.FreePort(), meshtest.FreePort()
	registerNativeWith(t, ca, "api", inbound)
	db := meshtest.StartBackend(t, "db")
	ca.StartConnectProxy(t, "-service", "db", "-service-addr", db.Addr(), "-listen", fmt.Sprintf("127.0.0.1:%d", sidecarPort))
	ca.StartConnectProxy(t, "-service", "web", "-upstream", fmt.Sprintf("api:%d", upstream))
	meshtest.Load(t, fmt.Sprintf(`{
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
	reverse_proxy 127.0.0.1:%d {
		transport connect web {
			destination db
		}
	}
}
http://127.0.0.1:%d {
	reverse_proxy 127.0.0.1:%d {
		transport connect web {
			destination db
			keepalive off
		}
	}
}`, meshtest.Globals(), ca.Addr, inboundSite("api", inbound, startCallerEcho(t)), outbound, sidecarPort, outboundFresh, sidecarPort), "caddyfile")
	into := fmt.Sprintf("http://127.0.0.1:%d/hello", upstream)
	out, outFresh := fmt.Sprintf("http://127.0.0.1:%d/", outbound), fmt.Sprintf("http://127.0.0.1:%d/", outboundFresh)
	awaitStatus(t, "web's proxy to reach api", "GET", into, http.StatusOK)
	awaitStatus(t, "caddymesh to reach db", "GET", outFresh, http.StatusOK)

	keptAlive := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	fresh := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	loads := map[string]*loadgen.Run{
		"into caddymesh, kept alive":   loadgen.Start(keptAlive, keptAliveRate/loadDivisor, into),
		"into caddymesh, new each":     loadgen.Start(fresh, max(freshRate/loadDivisor, 1), into),
		"out of caddymesh, kept alive": loadgen.Start(keptAlive, keptAliveRate/loadDivisor, out),
		"out of caddymesh, new each":   loadgen.Start(keptAlive, max(freshRate/loadDivisor, 1), outFresh),
	}
	time.Sleep(2 * time.Second)
	oldRoot := activeRoot(t, ca)
	rotated := time.Now()
	if _, err := ca.Client.Connect().CASetConfig(&api.CAConfig{Provider: "consul", Config: map[string]any{
		"LeafCertTTL": "72h", "PrivateKeyType": "rsa", "PrivateKeyBits": 2048,
	}}, nil); err != nil {
		t.Fatal(err)
	}
	// The agent serves the roots from its cache: the new one shows soon
	// after, not at once.
	newRoot := oldRoot
	meshtest.Eventually(t, 10*time.Second, "the CA configuration to make a new root", func() bool {
		newRoot = activeRoot(t, ca)
		return !bytes.Equal(newRoot.SubjectKeyId, oldRoot.SubjectKeyId)
	})
	probe := newProbe(t, ca)
	var webIssued string
	seen := awaitAll(t, map[string]func() bool{
		"agent api":     func() bool { _, ok := agentLeafFrom(ca, "api", newRoot); return ok },
		"agent web":     func() bool { serial, ok := agentLeafFrom(ca, "web", newRoot); webIssued = serial; return ok },
		"presented api": func() bool { return probe.presentsLeafFrom(inbound, newRoot) },
		"held web":      func() bool { return webIssued != "" && holds(t, "web", webIssued) },
	})
	t.Logf("the agent re-signed api's leaf %s and web's %s after the rotation; caddymesh presented api's %s after the agent had it, and held web's %s after",
		since(rotated, seen["agent api"]), since(rotated, seen["agent web"]), since(seen["agent api"], seen["presented api"]), since(seen["agent web"], seen["held web"]))
	time.Sleep(3 * time.Second)
	for direction, load := range loads {
		result := load.Stop()
		q := result.Quantiles()
		t.Logf("%s: %d requests, %d failed, p50 %s p99 %s p99.9 %s", direction, result.Sent, result.Failed, q[0], q[1], q[2])
		if result.Failed > 0 {
			t.Errorf("%s: %d of %d requests failed across the rotation: %v", direction, result.Failed, result.Sent, result.Failures)
		}
	}
}

// since is the time from start to end, rounded to the millisecond; 0 when
// end came first (the second of two polls saw it at once).
func since(start, end time.Time) time.Duration {
	return max(end.Sub(start), 0).Round(time.Millisecond)
}

// awaitAll polls each condition until all hold, at most a minute, and
// returns when each first held.
func awaitAll(t *testing.T, conditions map[string]func() bool) map[string]time.Time {
	t.Helper()
	seen := make(map[string]time.Time)
	deadline := time.Now().Add(time.Minute)
	for len(seen) < len(conditions) {
		if time.Now().After(deadline) {
			t.Fatalf("after a minute, only %v held", seen)
		}
		for name, holds := range conditions {
			if _, ok := seen[name]; !ok && holds() {
				seen[name] = time.Now()
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return seen
}

// agentLeafFrom returns the serial of the agent's leaf of service, and
// whether root signed it.
func agentLeafFrom(a *consultest.Agent, service string, root *x509.Certificate) (string, bool) {
	leaf, _, err := a.Client.Agent().ConnectCALeaf(service, nil)
	if err != nil {
		return "", false
	}
	block, _ := pem.Decode([]byte(leaf.CertPEM))
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil || !bytes.Equal(cert.AuthorityKeyId, root.SubjectKeyId) {
		return "", false
	}
	return leaf.SerialNumber, true
}

// holds reports whether GET /mesh/connect shows service's leaf with
// serial.
func holds(t *testing.T, service, serial string) bool {
	for _, l := range adminLeaves(t) {
		if l.Service == service && l.Serial == serial {
			return true
		}
	}
	return false
}

// probe is a Connect client with a leaf of its own, to see what a server
// presents.
type probe struct{ config *tls.Config }

// newProbe gets a leaf for the service probe from the agent.
func newProbe(t *testing.T, a *consultest.Agent) probe {
	return probe{config: &tls.Config{Certificates: []tls.Certificate{agentLeaf(t, a, "probe")}, InsecureSkipVerify: true}}
}

// agentLeaf returns the leaf certificate the agent gives service.
func agentLeaf(t testing.TB, a *consultest.Agent, service string) tls.Certificate {
	t.Helper()
	leaf, _, err := a.Client.Agent().ConnectCALeaf(service, nil)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair([]byte(leaf.CertPEM), []byte(leaf.PrivateKeyPEM))
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// presentsLeafFrom reports whether the server on port presents a leaf that
// root signed.
func (p probe) presentsLeafFrom(port int, root *x509.Certificate) bool {
	conn, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port), p.config)
	if err != nil {
		return false
	}
	defer conn.Close()
	return bytes.Equal(conn.ConnectionState().PeerCertificates[0].AuthorityKeyId, root.SubjectKeyId)
}

// registerNativeWith registers service with agent a as Connect-native at
// port; the agent goes with the test.
func registerNativeWith(t *testing.T, a *consultest.Agent, service string, port int) {
	t.Helper()
	err := a.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{
		Name: service, Address: "127.0.0.1", Port: port, Connect: &api.AgentServiceConnect{Native: true},
	})
	if err != nil {
		t.Fatal(err)
	}
}

// activeRoot returns the agent's active Connect root.
func activeRoot(t *testing.T, a *consultest.Agent) *x509.Certificate {
	t.Helper()
	roots, _, err := a.Client.Agent().ConnectCARoots(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, root := range roots.Roots {
		if root.ID == roots.ActiveRootID {
			block, _ := pem.Decode([]byte(root.RootCertPEM))
			cert, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			return cert
		}
	}
	t.Fatal("no active root")
	return nil
}
