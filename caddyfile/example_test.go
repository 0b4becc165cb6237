package caddyfile_test

import (
	"encoding/json"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// TestExamplesAreValid provisions the configs in examples/, as `caddy
// validate` does, so that they stay valid. Consul need not be up: a
// source that cannot reach it still provisions.
func TestExamplesAreValid(t *testing.T) {
	t.Setenv("CONSUL_HTTP_ADDR", "127.0.0.1:1")
	configs := map[string][]byte{"../examples/gateway.json": mustRead(t, "../examples/gateway.json")}
	for _, file := range []string{"../examples/Caddyfile", "../examples/sidecars/a.Caddyfile", "../examples/sidecars/b.Caddyfile"} {
		t.Setenv("PORT", "8201")
		t.Setenv("APP", "127.0.0.1:9201")
		t.Setenv("INSTANCE", "b-1")
		adapted, _, err := caddyconfig.GetAdapter("caddyfile").Adapt(mustRead(t, file), map[string]any{"filename": file})
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
