package connect

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddytls"

	"github.com/caddymesh/caddymesh/internal/meshtest"
	"github.com/caddymesh/caddymesh/internal/pool"
	"github.com/caddymesh/caddymesh/internal/spiffe"
)

// heldFor returns what a transport of web holds once Consul answered.
func heldFor(t testing.TB) *held {
	ca := meshtest.NewCA(t, "connect-ca")
	h := &held{roots: new(rootsWatch), leaf: &leafWatch{key: leafKey{Service: "web"}}}
	h.roots.current.Store(rootsOf(t, ca, "td.consul"))
	l, err := parseLeaf(leafOf(t, ca.Service(t, "spiffe://td.consul/ap/eng/ns/default/dc/dc2/svc/web"), "web"))
	if err != nil {
		t.Fatal(err)
	}
	h.leaf.current.Store(l)
	return h
}

// attemptContext is the dial context of a proxy attempt whose upstreams
// came from snapshot.
func attemptContext(snapshot *pool.Snapshot) context.Context {
	r := httptest.NewRequest("GET", "/", nil)
	ctx := context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{})
	r = r.WithContext(ctx)
	pool.Attach(r, snapshot)
	return r.Context()
}

func TestDestinationIsConfiguredOrTheInstancesConnectIdentity(t *testing.T) {
	h := heldFor(t)
	db := &spiffe.ServiceID{Namespace: "default", Datacenter: "dc1", Service: "db"}
	snapshot := pool.NewSnapshot([]pool.Instance{{Dial: "10.0.0.1:21000", Identity: db}, {Dial: "10.0.0.2:8080"}})
	for name, tc := range map[string]struct {
		transport Transport
		addr      string
		want      string
	}{
		"configured, defaults of this service": {Transport{Destination: "db"}, "10.0.0.2:8080", "spiffe://td.consul/ap/eng/ns/default/dc/dc2/svc/db"},
		"configured in full":                   {Transport{Destination: "db", Datacenter: "dc3", Namespace: "ns1", Partition: "default"}, "10.0.0.2:8080", "spiffe://td.consul/ns/ns1/dc/dc3/svc/db"},
		"from Connect's catalog":               {Transport{}, "10.0.0.1:21000", "spiffe://td.consul/ns/default/dc/dc1/svc/db"},
		"an instance without identity":         {Transport{}, "10.0.0.2:8080", ""},
		"an address not in the snapshot":       {Transport{}, "10.0.0.9:1", ""},
	} {
		tc.transport.held = h
		got, err := tc.transport.destination(attemptContext(snapshot), tc.addr)
		if (err == nil) != (tc.want != "") || (err == nil && got.String() != tc.want) {
			t.Errorf("%s: %v, %v; want %q", name, got, err, tc.want)
		}
	}
}

func TestStrictSNIOffOnlyWhenEveryPolicyTrustsConnect(t *testing.T) {
	connect := &caddytls.ClientAuthentication{Mode: "require_and_verify", CARaw: json.RawMessage(`{"provider":"connect"}`)}
	file := &caddytls.ClientAuthentication{Mode: "require_and_verify", CARaw: json.RawMessage(`{"provider":"file","pem_files":["ca.pem"]}`)}
	lax := &caddytls.ClientAuthentication{Mode: "verify_if_given", CARaw: json.RawMessage(`{"provider":"connect"}`)}
	otherMesh := &caddytls.ClientAuthentication{Mode: "require_and_verify", CARaw: json.RawMessage(`{"provider":"connect","consul":{"address":"10.0.0.1:8500"}}`)}
	withVerifier := &caddytls.ClientAuthentication{Mode: "require_and_verify", CARaw: json.RawMessage(`{"provider":"connect"}`),
		VerifiersRaw: []json.RawMessage{json.RawMessage(`{"verifier":"leaf","leaf_certs_loaders":[]}`)}}
	withLeaves := &caddytls.ClientAuthentication{Mode: "require_and_verify", CARaw: json.RawMessage(`{"provider":"connect"}`),
		TrustedLeafCerts: []string{"MIIB"}}
	spaced := &caddytls.ClientAuthentication{Mode: "require_and_verify", CARaw: json.RawMessage(`{ "provider": "connect" }`)}
	for name, tc := range map[string]struct {
		policies caddytls.ConnectionPolicies
		off      bool
	}{
		"one connect policy":                      {caddytls.ConnectionPolicies{{ClientAuthentication: connect}}, true},
		"two connect policies":                    {caddytls.ConnectionPolicies{{ClientAuthentication: connect}, {ClientAuthentication: connect}}, true},
		"connect and a file trust pool":           {caddytls.ConnectionPolicies{{ClientAuthentication: connect}, {ClientAuthentication: file}}, false},
		"connect and no client auth":              {caddytls.ConnectionPolicies{{ClientAuthentication: connect}, {}}, false},
		"connect in two modes":                    {caddytls.ConnectionPolicies{{ClientAuthentication: connect}, {ClientAuthentication: lax}}, false},
		"a file trust pool":                       {caddytls.ConnectionPolicies{{ClientAuthentication: file}}, false},
		"connect of two meshes":                   {caddytls.ConnectionPolicies{{ClientAuthentication: connect}, {ClientAuthentication: otherMesh}}, false},
		"connect and connect with a verifier":     {caddytls.ConnectionPolicies{{ClientAuthentication: connect}, {ClientAuthentication: withVerifier}}, false},
		"connect and connect with trusted leaves": {caddytls.ConnectionPolicies{{ClientAuthentication: withLeaves}, {ClientAuthentication: connect}}, false},
		"the same connect pool written twice":     {caddytls.ConnectionPolicies{{ClientAuthentication: connect}, {ClientAuthentication: spaced}}, true},
		"no policy":                               {nil, false},
	} {
		if got := connectOnly(tc.policies); got != tc.off {
			t.Errorf("%s: %v, want %v", name, got, tc.off)
		}
	}
}

func TestRoundTripNeverDialsInPlaintext(t *testing.T) {
	var plain, overTLS int
	refused := errors.New("refused by the test")
	tr := &Transport{}
	tr.HTTPTransport.Transport = &http.Transport{
		DialContext: func(context.Context, string, string) (net.Conn, error) { plain++; return nil, refused },
		DialTLSContext: func(context.Context, string, string) (net.Conn, error) {
			overTLS++
			return nil, refused
		},
	}
	for _, url := range []string{"http://10.0.0.1:8080/", "https://10.0.0.1:8443/"} {
		req := httptest.NewRequest("GET", url, nil)
		req.RequestURI = ""
		if _, err := tr.RoundTrip(req); !errors.Is(err, refused) {
			t.Errorf("%s: %v, want the test's refusal", url, err)
		}
	}
	if plain != 0 || overTLS != 2 {
		t.Errorf("%d plaintext dials and %d TLS dials, want 0 and 2", plain, overTLS)
	}
}
