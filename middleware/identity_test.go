package middleware

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/caddymesh/caddymesh/internal/meshtest"
	"github.com/caddymesh/caddymesh/internal/spiffe"
)

// newIdentity provisions id, quiet: the tests refuse many requests.
func newIdentity(t testing.TB, id *Identity) *Identity {
	provision(t, id)
	id.logger = zap.NewNop()
	return id
}

var fromWebHeader = IdentitySource{Source: "header", Header: "X-Mesh-Caller", Trusted: []string{"10.0.0.0/8", "::1/128"}}

// callerIs is a next handler that reports the caller variables.
var callerIs = caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
	caller, _ := caddyhttp.GetVar(r.Context(), CallerVar).(string)
	id, _ := caddyhttp.GetVar(r.Context(), CallerIDVar).(string)
	_, err := w.Write([]byte(caller + " " + id))
	return err
})

func fromPeer(remoteAddr, caller string) *http.Request {
	r := request("GET", "/")
	r.RemoteAddr = remoteAddr
	if caller != "" {
		r.Header.Set("X-Mesh-Caller", caller)
	}
	return r
}

func TestIdentityFromHeaderOnlyFromTrustedPeers(t *testing.T) {
	id := newIdentity(t, &Identity{From: []IdentitySource{fromWebHeader}})
	for _, tc := range []struct {
		peer, caller string
		status       int
		body         string
	}{
		{"10.1.2.3:5000", "web", 200, "web "},
		{"[::1]:5000", "web", 200, "web "},
		{"[::ffff:10.1.2.3]:5000", "web", 200, "web "}, // IPv4 mapped
		{"192.168.1.1:5000", "web", 403, `{"error":"identity header from an untrusted peer","caller":"web"}`},
		{"10.1.2.3:5000", "", 401, `{"error":"no caller identity"}`},
		{"192.168.1.1:5000", "", 401, `{"error":"no caller identity"}`},
	} {
		a := serve(id, fromPeer(tc.peer, tc.caller), callerIs)
		if a.status != tc.status || strings.TrimSuffix(a.body, "\n") != tc.body {
			t.Errorf("caller %q from %s: %d %q, want %d %q", tc.caller, tc.peer, a.status, a.body, tc.status, tc.body)
		}
	}
}

func TestIdentityFromHeaderRefusesWhatIsNotOneCallerName(t *testing.T) {
	id := newIdentity(t, &Identity{From: []IdentitySource{fromWebHeader}})
	for _, tc := range []struct {
		name    string
		peer    string
		callers []string // the header's copies
		status  int
		reason  string
	}{
		{"two copies", "10.1.2.3:5000", []string{"web", "admin"}, 401, "several X-Mesh-Caller headers"},
		{"empty", "10.1.2.3:5000", []string{""}, 401, "caller name is not a service name"},
		{"a path", "10.1.2.3:5000", []string{"../admin"}, 401, "caller name is not a service name"},
		{"an empty label", "10.1.2.3:5000", []string{"web..eu"}, 401, "caller name is not a service name"},
		{"too long", "10.1.2.3:5000", []string{strings.Repeat("a", 257)}, 401, "caller name is not a service name"},
		{"empty, untrusted", "192.168.1.1:5000", []string{""}, 403, "identity header from an untrusted peer"},
		{"two copies, untrusted", "192.168.1.1:5000", []string{"web", "web"}, 403, "identity header from an untrusted peer"},
		{"dotted and long enough", "10.1.2.3:5000", []string{"web.eu-1_a." + strings.Repeat("a", 245)}, 200, ""},
	} {
		r := fromPeer(tc.peer, "")
		r.Header["X-Mesh-Caller"] = tc.callers
		a := serve(id, r, callerIs)
		var body refusal
		json.Unmarshal([]byte(a.body), &body)
		if a.status != tc.status || body.Error != tc.reason {
			t.Errorf("%s: %d %q, want %d %q", tc.name, a.status, a.body, tc.status, tc.reason)
		}
	}
}

func TestIdentityHeaderIsRemovedBeforeTheRequestGoesOn(t *testing.T) {
	id := newIdentity(t, &Identity{From: []IdentitySource{{Source: "mtls"}, fromWebHeader}, TrustDomains: []string{"td.consul"}})
	var seen []string
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		seen = r.Header["X-Mesh-Caller"]
		return nil
	})
	if a := serve(id, fromPeer("10.1.2.3:5000", "web"), next); a.status != 200 || seen != nil {
		t.Errorf("identified by the header: %d, the application saw X-Mesh-Caller %q", a.status, seen)
	}
	leaf := meshtest.NewCA(t, "mesh-ca").Service(t, "spiffe://td.consul/ns/default/dc/dc1/svc/web")
	r := withCertificate(t, leaf, true)
	r.RemoteAddr = "10.1.2.3:5000"
	r.Header.Set("X-Mesh-Caller", "admin")
	if a := serve(id, r, next); a.status != 200 || seen != nil {
		t.Errorf("identified by the certificate: %d, the application saw X-Mesh-Caller %q", a.status, seen)
	}
}

// withCertificate returns a request over TLS that presented leaf, as
// Caddy hands it on: verified when verified is set.
func withCertificate(t *testing.T, leaf meshtest.Leaf, verified bool) *http.Request {
	cert, err := x509.ParseCertificate(leaf.Certificate.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	r := request("GET", "/")
	r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}}
	if verified {
		r.TLS.VerifiedChains = [][]*x509.Certificate{{cert}}
	}
	return r
}

func TestIdentityFromVerifiedCertificate(t *testing.T) {
	ca := meshtest.NewCA(t, "mesh-ca")
	web := ca.Service(t, "spiffe://11111111-2222.consul/ns/default/dc/dc1/svc/web")
	id := newIdentity(t, &Identity{From: []IdentitySource{{Source: "mtls"}, fromWebHeader}, TrustDomains: []string{"11111111-2222.consul"}})

	a := serve(id, withCertificate(t, web, true), callerIs)
	if a.status != 200 || a.body != "web spiffe://11111111-2222.consul/ns/default/dc/dc1/svc/web" {
		t.Errorf("verified certificate: %d %q, want the caller and its SPIFFE ID", a.status, a.body)
	}
	if a = serve(id, withCertificate(t, web, false), callerIs); a.status != 401 {
		t.Errorf("unverified certificate: %d %q, want 401", a.status, a.body)
	}
	noSPIFFE := ca.Server(t)
	if a = serve(id, withCertificate(t, noSPIFFE, true), callerIs); a.status != 401 {
		t.Errorf("certificate without a SPIFFE ID: %d %q, want 401", a.status, a.body)
	}
	r := withCertificate(t, noSPIFFE, true)
	r.RemoteAddr = "10.0.0.1:1234"
	r.Header.Set("X-Mesh-Caller", "batch")
	if a = serve(id, r, callerIs); a.status != 200 || a.body != "batch " {
		t.Errorf("no SPIFFE ID, then a trusted header: %d %q, want the header's caller", a.status, a.body)
	}
	// A SPIFFE ID that is not accepted is refused, not passed over to the
	// next source.
	for spiffeID, reason := range map[string]string{
		"spiffe://evil.example/ns/default/dc/dc1/svc/admin":         "SPIFFE ID of a trust domain not accepted",
		"spiffe://11111111-2222.consul/svc/admin":                   "not a Consul service SPIFFE ID, [/ap/PARTITION]/ns/NAMESPACE/dc/DATACENTER/svc/SERVICE",
		"spiffe://11111111-2222.consul/ns/default/dc/dc1/svc/a%2Fb": "SPIFFE ID: the service is not a service name",
	} {
		r := withCertificate(t, ca.Service(t, spiffeID), true)
		r.RemoteAddr = "10.0.0.1:1234"
		r.Header.Set("X-Mesh-Caller", "batch")
		var body refusal
		a := serve(id, r, callerIs)
		json.Unmarshal([]byte(a.body), &body)
		if a.status != 401 || body.Error != reason {
			t.Errorf("%s: %d %q, want 401 %q", spiffeID, a.status, a.body, reason)
		}
	}
}

// trustDomainSays is an intentions source that allows any caller, and
// knows the trust domain it holds.
type trustDomainSays struct{ domain *string }

func (trustDomainSays) Allows(*http.Request, string, string, string) bool { return true }
func (s trustDomainSays) TrustDomain() string                             { return *s.domain }

func TestIdentityTakesTheTrustDomainFromTheIntentions(t *testing.T) {
	ca := meshtest.NewCA(t, "mesh-ca")
	web := ca.Service(t, "spiffe://5c1e.consul/ns/default/dc/dc1/svc/web")
	domain := ""
	id := &Identity{From: []IdentitySource{{Source: "mtls"}}}
	id.intentions = trustDomainSays{&domain}
	if err := id.provisionTrustDomain(); err != nil {
		t.Fatal(err)
	}
	id.logger = zap.NewNop()
	if a := serve(id, withCertificate(t, web, true), callerIs); a.status != 401 {
		t.Errorf("before the intentions know the trust domain: %d %q, want 401", a.status, a.body)
	}
	domain = "5c1e.consul"
	if a := serve(id, withCertificate(t, web, true), callerIs); a.status != 200 {
		t.Errorf("of the intentions' trust domain: %d %q, want 200", a.status, a.body)
	}
	domain = "other.consul"
	if a := serve(id, withCertificate(t, web, true), callerIs); a.status != 401 {
		t.Errorf("of another trust domain: %d %q, want 401", a.status, a.body)
	}
	id.intentions = intentionsSay{"*"}
	if err := id.provisionTrustDomain(); err == nil || !strings.Contains(err.Error(), "trust_domain is required") {
		t.Errorf("intentions that do not know the trust domain: %v", err)
	}
}

// intentionsSay is an intentions source that allows the callers listed.
type intentionsSay []string

func (allowed intentionsSay) Allows(_ *http.Request, service, _, _ string) bool {
	return matchesAny(allowed, service)
}

func TestIdentityDecidesDenyThenAllowThenIntentions(t *testing.T) {
	for _, tc := range []struct {
		name        string
		allow, deny []string
		intentions  IntentionSource
		allowed     []string // of web, billing, batch
	}{
		{"nothing said: any caller", nil, nil, nil, []string{"web", "billing", "batch"}},
		{"allow list", []string{"web", "batch"}, nil, nil, []string{"web", "batch"}},
		{"allow any", []string{"*"}, nil, nil, []string{"web", "billing", "batch"}},
		{"deny list", nil, []string{"billing"}, nil, []string{"web", "batch"}},
		{"deny beats allow", []string{"*"}, []string{"billing"}, nil, []string{"web", "batch"}},
		{"deny any", []string{"web"}, []string{"*"}, nil, nil},
		{"intentions decide", nil, nil, intentionsSay{"batch"}, []string{"batch"}},
		{"allow before intentions", []string{"web"}, nil, intentionsSay{"batch"}, []string{"web", "batch"}},
		{"deny before intentions", nil, []string{"batch"}, intentionsSay{"*"}, []string{"web", "billing"}},
	} {
		id := newIdentity(t, &Identity{From: []IdentitySource{fromWebHeader}, Allow: tc.allow, Deny: tc.deny})
		id.intentions = tc.intentions
		var allowed []string
		for _, caller := range []string{"web", "billing", "batch"} {
			switch a := serve(id, fromPeer("10.0.0.1:1", caller), callerIs); a.status {
			case 200:
				allowed = append(allowed, caller)
			case 403:
				var body refusal
				if err := json.Unmarshal([]byte(a.body), &body); err != nil || body.Caller != caller || body.Error == "" {
					t.Errorf("%s: refusal body %q, want JSON naming the reason and the caller", tc.name, a.body)
				}
			default:
				t.Errorf("%s: %s answered %d", tc.name, caller, a.status)
			}
		}
		if strings.Join(allowed, ",") != strings.Join(tc.allowed, ",") {
			t.Errorf("%s: allowed %v, want %v", tc.name, allowed, tc.allowed)
		}
	}
}

func TestIdentityRefusalGoesToErrorRoutesWhenTheServerHasThem(t *testing.T) {
	id := newIdentity(t, &Identity{From: []IdentitySource{fromWebHeader}, Deny: []string{"web"}})
	srv := &caddyhttp.Server{Errors: &caddyhttp.HTTPErrorConfig{Routes: caddyhttp.RouteList{{}}}}
	r := fromPeer("10.0.0.1:1", "web")
	r = r.WithContext(context.WithValue(r.Context(), caddyhttp.ServerCtxKey, srv))
	a := serve(id, r, callerIs)
	var handlerErr caddyhttp.HandlerError
	if a.status != 403 || !errors.As(a.err, &handlerErr) || handlerErr.Err.Error() != "caller denied" || a.body != "" {
		t.Errorf("refused with error routes: %d %v %q, want a Caddy HTTP error 403 \"caller denied\" and no body written", a.status, a.err, a.body)
	}
}

func TestIdentityRejectsBadSettings(t *testing.T) {
	for _, tc := range []struct {
		from []IdentitySource
		want string
	}{
		{nil, "from: at least one source of identity is required"},
		{[]IdentitySource{{Source: "jwt"}}, `from "jwt": must be mtls or header`},
		{[]IdentitySource{{Source: "mtls", Header: "X-Caller"}}, "from mtls takes no header"},
		{[]IdentitySource{{Source: "header", Header: "X-Caller"}}, `from header "X-Caller": a header name and trusted networks are required`},
		{[]IdentitySource{{Source: "header", Trusted: []string{"10.0.0.0/8"}}}, `from header "": a header name`},
		{[]IdentitySource{{Source: "header", Header: "X-Caller", Trusted: []string{"10.0.0.0/33"}}}, `trusted "10.0.0.0/33"`},
		{[]IdentitySource{{Source: "header", Header: "X-Caller", Trusted: []string{"10.0.0.1"}}}, `trusted "10.0.0.1"`},
		{[]IdentitySource{{Source: "mtls"}}, "from mtls: trust_domain is required, unless Consul intentions say it"},
		{[]IdentitySource{{Source: "header", Header: "X Caller", Trusted: []string{"10.0.0.0/8"}}}, `from header "X Caller": not a valid header name`},
		{[]IdentitySource{{Source: "header", Header: "X-Caller:", Trusted: []string{"10.0.0.0/8"}}}, `from header "X-Caller:": not a valid header name`},
	} {
		err := (&Identity{From: tc.from}).Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("from %+v: error %v, want one saying %q", tc.from, err, tc.want)
		}
	}
	for _, domain := range []string{"", "Upper.consul", "td/x", "td:1"} {
		id := &Identity{From: []IdentitySource{{Source: "mtls"}}, TrustDomains: []string{domain}}
		if err := id.Validate(); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("trust_domain %q", domain)) {
			t.Errorf("trust_domain %q: error %v, want one naming it", domain, err)
		}
	}
}

func TestIdentityRefusesAnEmptyCallerName(t *testing.T) {
	mtls, td := []IdentitySource{{Source: "mtls"}}, []string{"td.consul"}
	for _, id := range []*Identity{{From: mtls, TrustDomains: td, Allow: []string{"web", ""}}, {From: mtls, TrustDomains: td, Deny: []string{""}}} {
		err := id.Validate()
		if err == nil || !strings.Contains(err.Error(), `"": an empty name is no caller`) {
			t.Errorf("allow %q deny %q: error %v, want one refusing the empty name", id.Allow, id.Deny, err)
		}
	}
}

func TestIdentityFromConnectRootsAdmitsOnlyTheirTrustDomain(t *testing.T) {
	ca := meshtest.NewCA(t, "connect-ca")
	rootCert := parsePEMFile(t, ca.File)
	owner := new(int)
	spiffe.Trusted.Set(owner, "5c1e.consul", [][]byte{rootCert.Raw})
	t.Cleanup(func() { spiffe.Trusted.Set(owner, "", nil) })
	configured := newIdentity(t, &Identity{From: []IdentitySource{{Source: "mtls"}}, TrustDomains: []string{"5c1e.consul", "other.consul"}})
	for id, status := range map[string]int{
		"spiffe://5c1e.consul/ns/default/dc/dc1/svc/web":  200,
		"spiffe://other.consul/ns/default/dc/dc1/svc/web": 401, // configured, but not the roots' trust domain
	} {
		r := withCertificate(t, ca.Service(t, id), true)
		r.TLS.VerifiedChains[0] = append(r.TLS.VerifiedChains[0], rootCert)
		if a := serve(configured, r, callerIs); a.status != status {
			t.Errorf("%s verified by a Connect root: %d %s, want %d", id, a.status, a.body, status)
		}
	}
	notConnect := withCertificate(t, ca.Service(t, "spiffe://other.consul/ns/default/dc/dc1/svc/web"), true)
	if a := serve(configured, notConnect, callerIs); a.status != 200 {
		t.Errorf("other.consul from a file trust pool, configured: %d %s, want 200", a.status, a.body)
	}
}

// parsePEMFile reads the one certificate of a PEM file.
func parsePEMFile(t *testing.T, file string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}
