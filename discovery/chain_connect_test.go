package discovery_test

import (
	"testing"

	"github.com/hashicorp/consul/api"
)

// With connect, the chain's targets take their instances from Consul's
// Connect catalog (the sidecar proxies), as dynamic consul does without
// chain: never the application's own address, behind its proxy.
func TestChainWithConnectTakesTheProxiesOfEachTarget(t *testing.T) {
	app, proxy := startChainEcho(t, "app"), startChainEcho(t, "proxy")
	register := func(reg *api.AgentServiceRegistration) {
		if err := agent.Client.Agent().ServiceRegister(reg); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = agent.Client.Agent().ServiceDeregister(reg.ID) })
	}
	register(&api.AgentServiceRegistration{Name: "ch-conn", ID: "ch-conn-1", Address: "127.0.0.1", Port: app.port()})
	register(&api.AgentServiceRegistration{Kind: api.ServiceKindConnectProxy, Name: "ch-conn-sidecar-proxy", ID: "ch-conn-1-proxy",
		Address: "127.0.0.1", Port: proxy.port(), Proxy: &api.AgentServiceConnectProxyConfig{DestinationServiceName: "ch-conn", DestinationServiceID: "ch-conn-1"}})
	url := serve(t, `reverse_proxy {
		dynamic consul ch-conn {
			chain
			connect
		}
	}`)
	awaitOnly(t, url, "proxy")
	if app.hits.Load() != 0 {
		t.Errorf("the application behind its proxy was called %d times", app.hits.Load())
	}
}
