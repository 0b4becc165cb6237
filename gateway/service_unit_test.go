package gateway

import (
	"net/http"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddymesh/caddymesh/internal/consul"
	"github.com/caddymesh/caddymesh/internal/reqkey"
)

// namespacedGate is mesh_service with go-micro's namespace, over a catalog
// holding services in and out of it.
func namespacedGate() *MeshService {
	s := &MeshService{Service: "{http.request.uri.path.0}", Namespace: "go.micro.api",
		AllowServices: []string{"go.micro.api.greeter", "greeter"}, RequireTag: "public", StripPath: true}
	s.name = reqkey.Compile(s.Service)
	services := map[string][]string{
		"go.micro.api.greeter": nil, "go.micro.api.orders": {"public"}, "go.micro.api.billing": nil,
		"go.micro.api.v2.greeter": {"public"}, "go.micro.srv.greeter": {"public"}, "go.micro.apix": {"public"},
		"greeter": {"public"}, "go.micro.api..bad": {"public"},
	}
	s.catalog = consul.NewFixedCatalog(services)
	return s
}

func TestServiceNamespaceNamesTheServiceInConsul(t *testing.T) {
	gate := namespacedGate()
	for _, tc := range []struct{ path, service, upstreamPath string }{
		{"/greeter/say/hello", "go.micro.api.greeter", "/say/hello"}, // allowed by name
		{"/orders", "go.micro.api.orders", "/"},                      // by tag
		{"/v2.greeter/x", "go.micro.api.v2.greeter", "/x"},           // a dotted name in the request
		{"/billing/x", "", ""},                                       // neither allowed nor tagged
		{"/go.micro.api.greeter/x", "", ""},                          // the full name is not asked for
		{"/go.micro.srv.greeter/x", "", ""},                          // out of the namespace
		{"/x/", "", ""},                                              // go.micro.apix is not in go.micro.api
		{"/.bad/x", "", ""},
		{"/", "", ""},
	} {
		r := gatewayRequest("", tc.path)
		err := gate.ServeHTTP(new(discardWriter), r, noopHandler)
		got, _ := caddyhttp.GetVar(r.Context(), ServiceVar).(string)
		if tc.service == "" {
			if herr, ok := err.(caddyhttp.HandlerError); !ok || herr.StatusCode != http.StatusNotFound {
				t.Errorf("%s: %v (service %q), want a 404", tc.path, err, got)
			}
			continue
		}
		if err != nil || got != tc.service || r.URL.Path != tc.upstreamPath {
			t.Errorf("%s: service %q, path %q, %v; want %q, %q", tc.path, got, r.URL.Path, err, tc.service, tc.upstreamPath)
		}
	}
	letsThroughWithoutAllocating(t, gate, "/greeter/hello")
}

func TestServiceNamespaceIsTheStartOfAName(t *testing.T) {
	for namespace, valid := range map[string]bool{
		"go.micro.api": true, "api": true, "go..micro": false, ".api": false, "api.": false, "a/b": false,
	} {
		s := &MeshService{Service: "{http.request.uri.path.0}", Namespace: namespace, AllowServices: []string{"*"}}
		if err := s.Validate(); (err == nil) != valid {
			t.Errorf("namespace %q: %v, want valid %v", namespace, err, valid)
		}
	}
}
