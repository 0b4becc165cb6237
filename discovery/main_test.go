package discovery_test

import (
	"fmt"
	"os"
	"testing"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddymesh/caddymesh"
	"github.com/caddymesh/caddymesh/internal/consultest"
	"github.com/caddymesh/caddymesh/internal/meshtest"
)

// agent is the real Consul dev agent of this package's tests.
var agent *consultest.Agent

func TestMain(m *testing.M) {
	meshtest.RunCaddyIfAsked()
	var err error
	agent, err = consultest.Start(consultest.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting consul:", err)
		os.Exit(1)
	}
	code := m.Run()
	agent.Stop()
	os.Exit(code)
}
