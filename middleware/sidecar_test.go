package middleware_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/caddymesh/caddymesh/internal/meshtest"
)

// startTraceEcho starts an application that answers with the trace context
// and the caller it was called with.
func startTraceEcho(t *testing.T) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "traceparent=%s caller=%s", r.Header.Get("Traceparent"), r.Header.Get("X-Mesh-Caller"))
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// sidecar runs the example sidecar Caddyfile in a Caddy process of its
// own, in front of the application app of service, which calls upstream,
// with the extra environment env. It returns the sidecar's outbound
// address and its process.
func sidecar(t *testing.T, example, service, app, upstream string, env ...string) (string, *meshtest.CaddyProcess) {
	admin := fmt.Sprintf("127.0.0.1:%d", meshtest.FreePort())
	outbound := fmt.Sprintf("127.0.0.1:%d", meshtest.FreePort())
	process := meshtest.StartCaddy(t, "../examples/"+example, admin, append([]string{
		"SERVICE=" + service, fmt.Sprintf("SERVICE_PORT=%d", meshtest.FreePort()), "APP=" + app,
		"UPSTREAM=" + upstream, "OUTBOUND_PORT=" + strings.TrimPrefix(outbound, "127.0.0.1:"),
		"CONSUL_HTTP_ADDR=" + agent.Addr, "ADMIN=" + admin, "OTEL_TRACES_EXPORTER=none"}, env...)...)
	return outbound, process
}

// fileCertificates is the environment of examples/sidecar-files.Caddyfile
// for service's certificate from ca.
func fileCertificates(ca *meshtest.CA, cert meshtest.Leaf) []string {
	return []string{"CA_FILE=" + ca.File, "CERT_FILE=" + cert.CertFile, "KEY_FILE=" + cert.KeyFile}
}

// traced sends a GET through url with a traceparent header, when given,
// and returns the status and what the application saw.
func traced(url, traceparent string) (int, string) {
	req, _ := http.NewRequest("GET", url, nil)
	if traceparent != "" {
		req.Header.Set("Traceparent", traceparent)
	}
	return meshtest.Do(meshtest.Client, req)
}

// traceID returns the trace ID of what the application saw.
func traceID(seen string) string {
	_, traceparent, _ := strings.Cut(seen, "traceparent=")
	parts := strings.Split(strings.Fields(traceparent)[0], "-")
	if len(parts) != 4 {
		return ""
	}
	return parts[1]
}

// TestSidecarExample runs examples/sidecar.Caddyfile as the sidecars of
// two services, web calling api, with no certificate file: through web's
// outbound listener, Consul, Connect's mutual TLS with the leaf
// certificates Consul's CA issued each, and api's inbound chain (tracing,
// mesh_identity with Consul intentions, mesh_limit, mesh_breaker,
// reverse_proxy).
func TestSidecarExample(t *testing.T) {
	setIntentions(t, agent.Client, "api",
		&api.SourceIntention{Name: "web", Action: api.IntentionActionAllow},
		&api.SourceIntention{Name: "*", Action: api.IntentionActionDeny})
	_, apiSidecar := sidecar(t, "sidecar.Caddyfile", "api", startTraceEcho(t), "web")
	webOutbound, _ := sidecar(t, "sidecar.Caddyfile", "web", startTraceEcho(t), "api")
	checkSidecars(t, "http://"+webOutbound+"/api/hello", apiSidecar)
}

// TestSidecarFilesExample runs examples/sidecar-files.Caddyfile, the
// sidecar with certificates from files, as TestSidecarExample runs the
// other.
func TestSidecarFilesExample(t *testing.T) {
	ca := meshtest.NewCA(t, "mesh-ca")
	// mesh_identity accepts the SPIFFE IDs of the trust domain of Consul's
	// Connect roots: the certificates are of that one, from another CA.
	roots, _, err := agent.Client.Agent().ConnectCARoots(nil)
	if err != nil {
		t.Fatal(err)
	}
	trustDomain := "spiffe://" + roots.TrustDomain + "/ns/default/dc/dc1/svc/"
	setIntentions(t, agent.Client, "api",
		&api.SourceIntention{Name: "web", Action: api.IntentionActionAllow},
		&api.SourceIntention{Name: "*", Action: api.IntentionActionDeny})
	_, apiSidecar := sidecar(t, "sidecar-files.Caddyfile", "api", startTraceEcho(t), "web", fileCertificates(ca, ca.Service(t, trustDomain+"api"))...)
	webOutbound, _ := sidecar(t, "sidecar-files.Caddyfile", "web", startTraceEcho(t), "api", fileCertificates(ca, ca.Service(t, trustDomain+"web"))...)
	checkSidecars(t, "http://"+webOutbound+"/api/hello", apiSidecar)
}

// checkSidecars checks web's calls to api through url, web's outbound
// listener: traced, from web, and refused once api's intentions deny web.
func checkSidecars(t *testing.T, url string, apiSidecar *meshtest.CaddyProcess) {
	meshtest.Eventually(t, propagation, "web's sidecar to reach api's", func() bool {
		status, _ := traced(url, "")
		return status == http.StatusOK
	})
	const clientTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	status, seen := traced(url, "00-"+clientTrace+"-00f067aa0ba902b7-01")
	if status != http.StatusOK || traceID(seen) != clientTrace || !strings.HasSuffix(seen, "caller=web") {
		t.Errorf("with the client's trace: %d, the application saw %q; want trace %s, called by web", status, seen, clientTrace)
	}
	if strings.Contains(seen, "00f067aa0ba902b7") {
		t.Errorf("the application saw the client's own span as its parent, not the sidecars': %s", seen)
	}
	_, fresh := traced(url, "")
	if id := traceID(fresh); len(id) != 32 || id == clientTrace || id == strings.Repeat("0", 32) {
		t.Errorf("without a trace: the application saw %q, want a fresh trace", fresh)
	}
	if !strings.Contains(apiSidecar.Log(), `"caller":"web"`) {
		t.Error("api's access log does not name the caller web")
	}

	setIntentions(t, agent.Client, "api", &api.SourceIntention{Name: "web", Action: api.IntentionActionDeny})
	meshtest.Eventually(t, propagation, "api's sidecar to refuse web", func() bool {
		status, _ := traced(url, "")
		return status == http.StatusForbidden
	})
}
