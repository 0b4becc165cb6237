package connect_test

import (
	"testing"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddymesh/caddymesh"
	"github.com/caddymesh/caddymesh/internal/consultest"
	"github.com/caddymesh/caddymesh/internal/meshtest"
)

// agent is the real Consul dev agent of this package's end-to-end tests:
// Connect and its built-in CA are on in dev mode.
var agent *consultest.Agent

func TestMain(m *testing.M) { meshtest.MainWithConsul(m, &agent) }
