package middleware_test

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/caddymesh/caddymesh/internal/consultest"
	"github.com/caddymesh/caddymesh/internal/meshtest"
)

// startEcho starts an application on loopback that answers with the
// caller Caddy passed it in X-Mesh-Caller.
func startEcho(t *testing.T) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "caller="+r.Header.Get("X-Mesh-Caller"))
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// mtlsSite is a config with one site on port, serving server's
// certificate and verifying the client certificates ca issued, when given;
// handlers are its directives.
func mtlsSite(port int, ca *meshtest.CA, server meshtest.Leaf, handlers string) string {
	return fmt.Sprintf(`{
	%s
	auto_https disable_redirects
}
https://localhost:%d {
	tls %s %s {
		client_auth {
			mode verify_if_given
			trust_pool file %s
		}
	}
	%s
}`, meshtest.Globals(), port, server.CertFile, server.KeyFile, ca.File, handlers)
}

// tlsGet sends one GET over TLS, trusting ca, presenting cert when given,
// whoever the server says it trusts.
func tlsGet(url string, ca *meshtest.CA, cert *meshtest.Leaf) (int, string, error) {
	config := &tls.Config{RootCAs: ca.Pool}
	if cert != nil {
		config.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return &cert.Certificate, nil
		}
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: config, DisableKeepAlives: true}}
	resp, err := client.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(body)), err
}

func TestIdentityFromClientCertificatesThroughCaddy(t *testing.T) {
	ca := meshtest.NewCA(t, "mesh-ca")
	server := ca.Server(t)
	web := ca.Service(t, "spiffe://7f3c.consul/ns/default/dc/dc1/svc/web")
	billing := ca.Service(t, "spiffe://7f3c.consul/ns/default/dc/dc1/svc/billing")
	impostor := meshtest.NewCA(t, "other-ca").Service(t, "spiffe://7f3c.consul/ns/default/dc/dc1/svc/web")
	accessLog := filepath.Join(t.TempDir(), "access.log")
	port := meshtest.FreePort()
	meshtest.Load(t, mtlsSite(port, ca, server, fmt.Sprintf(`log {
		output file %s
	}
	log_append caller {http.vars.mesh_caller}
	mesh_identity {
		from mtls
		trust_domain 7f3c.consul
		allow web
	}
	reverse_proxy %s {
		header_up X-Mesh-Caller {http.vars.mesh_caller}
	}`, accessLog, startEcho(t))), "caddyfile")

	url := fmt.Sprintf("https://localhost:%d/", port)
	for _, tc := range []struct {
		name   string
		cert   *meshtest.Leaf
		status int
		body   string
	}{
		{"web, allowed", &web, 200, "caller=web"},
		{"billing, not allowed", &billing, 403, `{"error":"caller not allowed","caller":"billing"}`},
		{"no certificate", nil, 401, `{"error":"no caller identity"}`},
	} {
		status, body, err := tlsGet(url, ca, tc.cert)
		if err != nil || status != tc.status || body != tc.body {
			t.Errorf("%s: %d %q %v, want %d %q", tc.name, status, body, err, tc.status, tc.body)
		}
	}
	if status, body, err := tlsGet(url, ca, &impostor); err == nil {
		t.Errorf("a certificate from another CA was accepted: %d %s", status, body)
	}
	logged, err := os.ReadFile(accessLog)
	if err != nil || !strings.Contains(string(logged), `"caller":"web"`) {
		t.Errorf("the access log does not name the caller web:\n%s", logged)
	}
}

func TestIdentityFromAHeaderOnlyFromTrustedNetworks(t *testing.T) {
	trusting, distrusting := meshtest.FreePort(), meshtest.FreePort()
	site := `:%d {
	mesh_identity {
		from header X-Mesh-Caller {
			trusted %s
		}
	}
	respond "caller={http.vars.mesh_caller}"
}
`
	meshtest.Load(t, fmt.Sprintf("{\n\t%s\n}\n", meshtest.Globals())+
		fmt.Sprintf(site, trusting, "127.0.0.0/8 ::1/128")+fmt.Sprintf(site, distrusting, "10.0.0.0/8"), "caddyfile")

	for _, tc := range []struct {
		port   int
		caller string
		status int
		body   string
	}{
		{trusting, "web", 200, "caller=web"},
		{trusting, "", 401, `{"error":"no caller identity"}`},
		{distrusting, "web", 403, `{"error":"identity header from an untrusted peer","caller":"web"}`},
	} {
		status, body := getAs(fmt.Sprintf("http://127.0.0.1:%d/", tc.port), tc.caller, "GET")
		if status != tc.status || body != tc.body {
			t.Errorf("port %d, caller %q: %d %q, want %d %q", tc.port, tc.caller, status, body, tc.status, tc.body)
		}
	}
}

// getAs sends a request with the caller in X-Mesh-Caller.
func getAs(url, caller, method string) (int, string) {
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		return 0, err.Error()
	}
	if caller != "" {
		req.Header.Set("X-Mesh-Caller", caller)
	}
	resp, err := meshtest.Client.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(body))
}

// intentionsSite is a site that decides with the intentions of the
// destination orders, identifying callers by header; consul holds the
// settings of the consul block, and intentions the other options of the
// intentions source.
func intentionsSite(port int, consul, intentions string) string {
	return fmt.Sprintf(`:%d {
	mesh_identity {
		from header X-Mesh-Caller {
			trusted 127.0.0.1/32
		}
		intentions orders {
			consul {
				%s
			}
			%s
		}
	}
	respond "ok"
}
`, port, consul, intentions)
}

// setIntentions writes the service-intentions entry of destination.
func setIntentions(t *testing.T, client *api.Client, destination string, sources ...*api.SourceIntention) {
	t.Helper()
	entry := &api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: destination, Sources: sources}
	if _, _, err := client.ConfigEntries().Set(entry, nil); err != nil {
		t.Fatal(err)
	}
}

// call is a request of a caller, and the status it should get.
type call struct {
	caller, method, path string
	status               int
}

// expectCalls waits until every call to base gets its status.
func expectCalls(t *testing.T, what, base string, calls ...call) {
	t.Helper()
	var wrong []string
	meshtest.Eventually(t, propagation, what, func() bool {
		wrong = wrong[:0]
		for _, c := range calls {
			if status, body := getAs(base+c.path, c.caller, c.method); status != c.status {
				wrong = append(wrong, fmt.Sprintf("%s %s %s: %d %s, want %d", c.caller, c.method, c.path, status, body, c.status))
			}
		}
		return len(wrong) == 0
	})
	if len(wrong) > 0 {
		t.Log(strings.Join(wrong, "\n"))
	}
}

// propagation bounds how long a change in Consul takes to reach Caddy.
const propagation = 10 * time.Second

func TestIntentionsDecideAsConsulSaysLive(t *testing.T) {
	port := meshtest.FreePort()
	meshtest.Load(t, fmt.Sprintf("{\n\t%s\n}\n", meshtest.Globals())+intentionsSite(port, "address "+agent.Addr, ""), "caddyfile")
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	// No intentions: Consul's default, allow, on a dev agent without ACLs.
	expectCalls(t, "the default to allow", base, call{"billing", "GET", "/", 200})

	setIntentions(t, agent.Client, "orders",
		&api.SourceIntention{Name: "web", Action: api.IntentionActionAllow},
		&api.SourceIntention{Name: "*", Action: api.IntentionActionDeny})
	expectCalls(t, "web allowed, any other caller denied", base,
		call{"web", "GET", "/", 200}, call{"billing", "GET", "/", 403})
	if status, body := getAs(base+"/", "billing", "GET"); body != `{"error":"caller denied by intentions","caller":"billing"}` {
		t.Errorf("denied by intentions: %d %s", status, body)
	}

	// L7 intentions need the destination to speak HTTP.
	defaults := &api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "orders", Protocol: "http"}
	if _, _, err := agent.Client.ConfigEntries().Set(defaults, nil); err != nil {
		t.Fatal(err)
	}
	setIntentions(t, agent.Client, "orders",
		&api.SourceIntention{Name: "web", Action: api.IntentionActionAllow},
		&api.SourceIntention{Name: "billing", Permissions: []*api.IntentionPermission{
			{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{PathPrefix: "/reports", Methods: []string{"GET"}}},
			{Action: api.IntentionActionDeny, HTTP: &api.IntentionHTTPPermission{PathPrefix: "/"}},
		}},
		&api.SourceIntention{Name: "*", Action: api.IntentionActionDeny})
	expectCalls(t, "billing allowed to GET /reports only", base,
		call{"billing", "GET", "/reports/2026", 200}, call{"billing", "POST", "/reports", 403},
		call{"billing", "GET", "/orders", 403}, call{"web", "POST", "/orders", 200}, call{"batch", "GET", "/", 403})

	if _, err := agent.Client.ConfigEntries().Delete(api.ServiceIntentions, "orders", nil); err != nil {
		t.Fatal(err)
	}
	expectCalls(t, "the default again once the intentions are gone", base, call{"batch", "GET", "/", 200})
}

func TestIntentionsDefaultIsTheAgentsDefaultIntentionPolicy(t *testing.T) {
	denying, err := consultest.Start(consultest.Options{HCL: []string{`default_intention_policy = "deny"`}})
	if err != nil {
		t.Fatal(err)
	}
	defer denying.Stop()
	setIntentions(t, denying.Client, "orders", &api.SourceIntention{Name: "web", Action: api.IntentionActionAllow})
	consulDefault, overridden := meshtest.FreePort(), meshtest.FreePort()
	meshtest.Load(t, fmt.Sprintf("{\n\t%s\n}\n", meshtest.Globals())+
		intentionsSite(consulDefault, "address "+denying.Addr, "")+
		intentionsSite(overridden, "address "+denying.Addr, "default allow"), "caddyfile")

	expectCalls(t, "the agent's default, deny", fmt.Sprintf("http://127.0.0.1:%d", consulDefault),
		call{"web", "GET", "/", 200}, call{"billing", "GET", "/", 403})
	expectCalls(t, "the default overridden to allow", fmt.Sprintf("http://127.0.0.1:%d", overridden),
		call{"web", "GET", "/", 200}, call{"billing", "GET", "/", 200})
}

func TestIntentionsDefaultIsTheACLDefaultPolicyForATokenThatCannotReadTheAgent(t *testing.T) {
	acls, err := consultest.Start(consultest.Options{ManagementToken: "8c5e2f1a-5bd7-4ef1-9c39-6a3e0b6f2d11"})
	if err != nil {
		t.Fatal(err)
	}
	defer acls.Stop()
	setIntentions(t, acls.Client, "orders", &api.SourceIntention{Name: "web", Action: api.IntentionActionAllow})
	policy, _, err := acls.Client.ACL().PolicyCreate(&api.ACLPolicy{
		Name: "read-orders-intentions", Rules: `service "orders" { policy = "read" intentions = "read" }`,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	token, _, err := acls.Client.ACL().TokenCreate(&api.ACLToken{Policies: []*api.ACLTokenPolicyLink{{ID: policy.ID}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	port := meshtest.FreePort()
	meshtest.Load(t, fmt.Sprintf("{\n\t%s\n}\n", meshtest.Globals())+
		intentionsSite(port, fmt.Sprintf("address %s\n\t\t\t\ttoken %s", acls.Addr, token.SecretID), ""), "caddyfile")
	expectCalls(t, "the ACL default, deny", fmt.Sprintf("http://127.0.0.1:%d", port),
		call{"web", "GET", "/", 200}, call{"billing", "GET", "/", 403})
}

// startURIEcho starts an application on loopback that answers with the
// request target it got and the identity header, if it got one.
func startURIEcho(t *testing.T) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s caller=%s header=%q", r.RequestURI, r.Header.Get("X-Mesh-Caller-Name"), r.Header.Values("X-Mesh-Caller"))
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// The cases: with an L7 intention deny PathPrefix /admin, then
// allow PathPrefix /, a path that reaches /admin once normalized is
// denied, and the application gets the normalized path.
func TestIntentionsDecideOnTheNormalizedPathLive(t *testing.T) {
	defaults := &api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "ledger", Protocol: "http"}
	if _, _, err := agent.Client.ConfigEntries().Set(defaults, nil); err != nil {
		t.Fatal(err)
	}
	setIntentions(t, agent.Client, "ledger", &api.SourceIntention{Name: "web", Permissions: []*api.IntentionPermission{
		{Action: api.IntentionActionDeny, HTTP: &api.IntentionHTTPPermission{PathPrefix: "/admin"}},
		{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{PathPrefix: "/"}},
	}})
	t.Cleanup(func() { agent.Client.ConfigEntries().Delete(api.ServiceIntentions, "ledger", nil) })
	port := meshtest.FreePort()
	meshtest.Load(t, fmt.Sprintf(`{
	%s
}
:%d {
	mesh_identity {
		from header X-Mesh-Caller {
			trusted 127.0.0.1/32
		}
		intentions ledger {
			consul {
				address %s
			}
		}
	}
	reverse_proxy %s {
		header_up X-Mesh-Caller-Name {http.vars.mesh_caller}
	}
}`, meshtest.Globals(), port, agent.Addr, startURIEcho(t)), "caddyfile")
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	expectCalls(t, "web allowed but for /admin", base, call{"web", "GET", "/public/x", 200}, call{"web", "GET", "/admin", 403})

	for _, tc := range []struct {
		target string
		status int
		body   string // what the application got
	}{
		{"/public/../admin", 403, ""},
		{"/./admin", 403, ""},
		{"/x/%2e%2e/admin", 403, ""},
		{"/%61dmin", 403, ""},
		{"//admin/users", 403, ""},
		{"/public/%2e/x/../y?q=/../admin", 200, `/public/y?q=/../admin caller=web header=[]`},
		{"/public//%7Eweb", 200, `/public/~web caller=web header=[]`},
		{"/public%2F..%2Fadmin", 400, ""},
		{"/x/%00/admin", 400, ""},
	} {
		status, body := getAs(base+tc.target, "web", "GET")
		if status != tc.status || (tc.body != "" && body != tc.body) {
			t.Errorf("GET %s: %d %q, want %d %q", tc.target, status, body, tc.status, tc.body)
		}
	}
}

// An agent whose default_intention_policy (allow) differs from its ACL
// default policy (deny): a token that may read the agent gets Consul's
// own decision, the agent's default; one that may not gets the ACL
// default, and a warning saying so.
func TestIntentionsDefaultWithAndWithoutAgentRead(t *testing.T) {
	const management = "3b0e1f5c-6a0d-4c69-a1f4-2d3c4b5a6978"
	acls, err := consultest.Start(consultest.Options{ManagementToken: management, HCL: []string{`default_intention_policy = "allow"`}})
	if err != nil {
		t.Fatal(err)
	}
	defer acls.Stop()
	setIntentions(t, acls.Client, "orders", &api.SourceIntention{Name: "batch", Action: api.IntentionActionDeny})
	tokenWith := func(rules string) string {
		policy, _, err := acls.Client.ACL().PolicyCreate(&api.ACLPolicy{Name: fmt.Sprintf("p%d", meshtest.FreePort()), Rules: rules}, nil)
		if err != nil {
			t.Fatal(err)
		}
		token, _, err := acls.Client.ACL().TokenCreate(&api.ACLToken{Policies: []*api.ACLTokenPolicyLink{{ID: policy.ID}}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return token.SecretID
	}
	const readIntentions = `service "orders" { policy = "read" intentions = "read" }`
	agentReader := tokenWith(readIntentions + ` agent_prefix "" { policy = "read" }`)
	notAgentReader := tokenWith(readIntentions)

	// Consul's own answer, the oracle: billing, which no intention names.
	authz, err := acls.Client.Agent().ConnectAuthorize(&api.AgentAuthorizeParams{
		Target: "orders", ClientCertURI: "spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/billing"})
	if err != nil || !authz.Authorized {
		t.Fatalf("Consul's authorize for billing: %+v %v, want it authorized by the agent's default", authz, err)
	}

	logFile := filepath.Join(t.TempDir(), "caddy.log")
	reading, notReading := meshtest.FreePort(), meshtest.FreePort()
	meshtest.Load(t, fmt.Sprintf("{\n\t%s\n\tlog {\n\t\toutput file %s\n\t}\n}\n", meshtest.Globals(), logFile)+
		intentionsSite(reading, fmt.Sprintf("address %s\n\t\t\t\ttoken %s", acls.Addr, agentReader), "")+
		intentionsSite(notReading, fmt.Sprintf("address %s\n\t\t\t\ttoken %s", acls.Addr, notAgentReader), ""), "caddyfile")
	expectCalls(t, "the agent's default, allow, as Consul decides", fmt.Sprintf("http://127.0.0.1:%d", reading),
		call{"billing", "GET", "/", 200}, call{"batch", "GET", "/", 403})
	expectCalls(t, "the ACL default, deny, without agent:read", fmt.Sprintf("http://127.0.0.1:%d", notReading),
		call{"billing", "GET", "/", 403}, call{"batch", "GET", "/", 403})
	logged, _ := os.ReadFile(logFile)
	warnings := strings.Count(string(logged), "the token may not read the local agent (agent:read)")
	if warnings != 1 || !strings.Contains(string(logged), `"acl_default_policy":"deny"`) {
		t.Errorf("%d warnings about agent:read, want 1 naming the ACL default policy:\n%s", warnings, logged)
	}
	if strings.Contains(string(logged), agentReader) || strings.Contains(string(logged), notAgentReader) {
		t.Error("a token is in the log")
	}
}

// With Consul intentions and no trust_domain, the SPIFFE IDs accepted are
// those of the trust domain of Consul's Connect roots; the others the
// issue found read as admin are refused, 401.
func TestIdentityAcceptsConsulsTrustDomainLive(t *testing.T) {
	roots, _, err := agent.Client.Agent().ConnectCARoots(nil)
	if err != nil {
		t.Fatal(err)
	}
	setIntentions(t, agent.Client, "vault", &api.SourceIntention{Name: "*", Action: api.IntentionActionAllow})
	t.Cleanup(func() { agent.Client.ConfigEntries().Delete(api.ServiceIntentions, "vault", nil) })
	ca := meshtest.NewCA(t, "mesh-ca")
	server := ca.Server(t)
	port := meshtest.FreePort()
	meshtest.Load(t, mtlsSite(port, ca, server, fmt.Sprintf(`mesh_identity {
		from mtls
		intentions vault {
			consul {
				address %s
			}
		}
	}
	respond "caller={http.vars.mesh_caller}"`, agent.Addr)), "caddyfile")

	url := fmt.Sprintf("https://localhost:%d/", port)
	td := roots.TrustDomain
	for spiffeID, want := range map[string]string{
		"spiffe://" + td + "/ns/default/dc/dc1/svc/web":               "200 caller=web",
		"spiffe://" + td + "/ap/default/ns/default/dc/dc1/svc/web":    "200 caller=web",
		"spiffe://evil.example/ns/default/dc/dc1/svc/admin":           `401 {"error":"SPIFFE ID of a trust domain not accepted","caller":"admin"}`,
		"spiffe://" + td + "/svc/admin":                               `401 {"error":"not a Consul service SPIFFE ID, [/ap/PARTITION]/ns/NAMESPACE/dc/DATACENTER/svc/SERVICE"}`,
		"spiffe://" + td + "/ns/default/dc/dc1/svc/web/svc/admin":     `401 {"error":"not a Consul service SPIFFE ID, [/ap/PARTITION]/ns/NAMESPACE/dc/DATACENTER/svc/SERVICE"}`,
		"spiffe://" + td + "/ns/default/dc/dc1/svc/web%2Fsvc%2Fadmin": `401 {"error":"SPIFFE ID: the service is not a service name"}`,
	} {
		cert := ca.Service(t, spiffeID)
		var status int
		var body string
		meshtest.Eventually(t, propagation, "Consul's trust domain to be read", func() bool {
			status, body, err = tlsGet(url, ca, &cert)
			return err == nil && !(status == 401 && strings.HasPrefix(want, "200"))
		})
		if got := fmt.Sprintf("%d %s", status, body); got != want {
			t.Errorf("%s: %s, want %s", spiffeID, got, want)
		}
	}
}

// mesh_identity follows the mesh app's path_with_escaped_slashes_action.
func TestIdentityFollowsTheMeshAppsEscapedSlashesAction(t *testing.T) {
	port := meshtest.FreePort()
	meshtest.Load(t, fmt.Sprintf(`{
	%s
	mesh {
		path_with_escaped_slashes_action UNESCAPE_AND_REDIRECT
	}
}
:%d {
	mesh_identity {
		from header X-Mesh-Caller {
			trusted 127.0.0.1/32
		}
	}
	respond "{http.request.uri}"
}`, meshtest.Globals(), port), "caddyfile")
	noRedirects := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for target, want := range map[string]string{
		"/a%2Fb/../c?q=1": "307 /a/c?q=1",
		"/a/../b?q=1":     "200 /b?q=1",
	} {
		req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d%s", port, target), nil)
		req.Header.Set("X-Mesh-Caller", "web")
		resp, err := noRedirects.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got := fmt.Sprintf("%d %s", resp.StatusCode, body)
		if resp.StatusCode == http.StatusTemporaryRedirect {
			got = fmt.Sprintf("%d %s", resp.StatusCode, resp.Header.Get("Location"))
		}
		if got != want {
			t.Errorf("GET %s: %s, want %s", target, got, want)
		}
	}
}
