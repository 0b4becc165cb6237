package storage

import (
	"context"
	"testing"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddymesh/caddymesh/internal/consul"
	"github.com/caddymesh/caddymesh/internal/consultest"
	"github.com/caddymesh/caddymesh/internal/meshtest"
)

var agent *consultest.Agent

func TestMain(m *testing.M) {
	meshtest.MainWithConsul(m, &agent)
}

// newStorage provisions a consul_kv storage on the test agent under a
// prefix of the test's own, and cleans it up at the test's end.
func newStorage(t testing.TB, s *ConsulKV) *ConsulKV {
	t.Helper()
	if s.Consul == nil {
		s.Consul = &consul.Config{Address: agent.Addr}
	}
	ctx, cancel := caddyContext()
	t.Cleanup(cancel)
	if err := s.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Cleanup() })
	return s
}

// caddyContext is a context with no config, as for a storage alone.
func caddyContext() (caddy.Context, context.CancelFunc) {
	return caddy.NewContext(caddy.Context{Context: context.Background()})
}
