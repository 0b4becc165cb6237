package caddyfile_test

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddymesh/caddymesh/internal/meshtest"
)

// TestExamplesAreValid provisions the configs in examples/, as `caddy
// validate` does, so that they stay valid, and checks that the Caddyfiles
// are formatted as `caddy fmt` would. Consul need not be up: a source that
// cannot reach it still provisions.
func TestExamplesAreValid(t *testing.T) {
	t.Setenv("CONSUL_HTTP_ADDR", "127.0.0.1:1")
	t.Setenv("PORT", "8201")
	t.Setenv("APP", "127.0.0.1:9201")
	t.Setenv("INSTANCE", "b-1")
	ca := meshtest.NewCA(t, "mesh-ca")
	cert := ca.Service(t, "spiffe://5c1e7d2a.consul/ns/default/dc/dc1/svc/api")
	for name, value := range map[string]string{
		"SERVICE": "api", "SERVICE_PORT": "21000", "UPSTREAM": "web", "OUTBOUND_PORT": "9191",
		"CA_FILE": ca.File, "CERT_FILE": cert.CertFile, "KEY_FILE": cert.KeyFile,
	} {
		t.Setenv(name, value)
	}
	configs := map[string][]byte{"../examples/gateway.json": mustRead(t, "../examples/gateway.json")}
	for _, file := range []string{"../examples/Caddyfile", "../examples/gateway.Caddyfile", "../examples/sidecar.Caddyfile", "../examples/sidecar-files.Caddyfile", "../examples/sidecars/a.Caddyfile", "../examples/sidecars/b.Caddyfile"} {
		body := mustRead(t, file)
		if formatted := caddyfile.Format(body); !bytes.Equal(formatted, body) {
			t.Errorf("%s is not formatted: run caddy fmt --overwrite", file)
		}
		adapted, _, err := caddyconfig.GetAdapter("caddyfile").Adapt(body, map[string]any{"filename": file})
		if err != nil {
			t.Errorf("%s: %v", file, err)
			continue
		}
		configs[file] = adapted
	}
	for file, config := range configs {
		var cfg caddy.Config
		if err := json.Unmarshal(caddy.RemoveMetaFields(config), &cfg); err != nil {
			t.Errorf("%s: %v", file, err)
			continue
		}
		if err := caddy.Validate(&cfg); err != nil {
			t.Errorf("%s: %v", file, err)
		}
	}
}
