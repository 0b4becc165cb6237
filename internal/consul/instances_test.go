package consul

import (
	"testing"

	"github.com/hashicorp/consul/api"
)

// entry builds a health entry for service web with the given checks.
func entry(id, address string, port int, weights api.AgentWeights, statuses ...string) *api.ServiceEntry {
	e := &api.ServiceEntry{
		Node:    &api.Node{Node: "node-" + id, Address: "10.0.0.1", Datacenter: "dc1"},
		Service: &api.AgentService{ID: id, Service: "web", Address: address, Port: port, Weights: weights},
	}
	for i, s := range statuses {
		e.Checks = append(e.Checks, &api.HealthCheck{CheckID: id + "-check-" + string(rune('a'+i)), Status: s})
	}
	return e
}

func TestClassify(t *testing.T) {
	none := api.AgentWeights{}
	w := func(passing, warning int) api.AgentWeights {
		return api.AgentWeights{Passing: passing, Warning: warning}
	}
	maintenance := entry("m", "10.0.0.9", 80, none, api.HealthPassing)
	maintenance.Checks = append(maintenance.Checks, &api.HealthCheck{CheckID: api.ServiceMaintPrefix + "m", Status: api.HealthCritical})
	nodeMaintenance := entry("n", "10.0.0.9", 80, none, api.HealthPassing)
	nodeMaintenance.Checks = append(nodeMaintenance.Checks, &api.HealthCheck{CheckID: api.NodeMaint, Status: api.HealthCritical})
	sidecar := entry("p", "10.0.0.9", 21000, none, api.HealthPassing)
	sidecar.Service.Kind = api.ServiceKindConnectProxy

	type instance struct {
		dial   string
		weight int
		health string
	}
	tests := []struct {
		name    string
		mode    string
		entry   *api.ServiceEntry
		healthy bool
		all     []instance // nil: left out entirely
	}{
		{"passing instance without weights has weight 1", HealthPassing,
			entry("a", "10.0.0.2", 8080, none, api.HealthPassing), true, []instance{{"10.0.0.2:8080", 1, "passing"}}},
		{"passing instance has its passing weight", HealthPassing,
			entry("a", "10.0.0.2", 8080, w(5, 1), api.HealthPassing, api.HealthPassing), true, []instance{{"10.0.0.2:8080", 5, "passing"}}},
		{"warning instance is out of rotation in passing mode", HealthPassing,
			entry("a", "10.0.0.2", 8080, w(5, 2), api.HealthPassing, api.HealthWarning), false, []instance{{"10.0.0.2:8080", 2, "warning"}}},
		{"warning instance has its warning weight in warning mode", HealthWarning,
			entry("a", "10.0.0.2", 8080, w(5, 2), api.HealthWarning), true, []instance{{"10.0.0.2:8080", 2, "warning"}}},
		{"critical check takes an instance out of rotation in warning mode", HealthWarning,
			entry("a", "10.0.0.2", 8080, w(5, 2), api.HealthWarning, api.HealthCritical), false, []instance{{"10.0.0.2:8080", 5, "critical"}}},
		{"critical serfHealth of the node takes its instances out", HealthPassing,
			func() *api.ServiceEntry {
				e := entry("a", "10.0.0.2", 8080, none, api.HealthPassing)
				e.Checks = append(e.Checks, &api.HealthCheck{CheckID: "serfHealth", Status: api.HealthCritical})
				return e
			}(), false, []instance{{"10.0.0.2:8080", 1, "critical"}}},
		{"warning weight 0 takes the instance out of rotation", HealthWarning,
			entry("a", "10.0.0.2", 8080, w(3, 0), api.HealthWarning), false, []instance{{"10.0.0.2:8080", 1, "warning"}}},
		{"weight above 128 is clamped", HealthPassing,
			entry("a", "10.0.0.2", 8080, w(1000, 1), api.HealthPassing), true, []instance{{"10.0.0.2:8080", 128, "passing"}}},
		{"empty service address falls back to the node address", HealthPassing,
			entry("a", "", 8080, none, api.HealthPassing), true, []instance{{"10.0.0.1:8080", 1, "passing"}}},
		{"IPv6 address is bracketed", HealthPassing,
			entry("a", "fd00::2", 8080, none, api.HealthPassing), true, []instance{{"[fd00::2]:8080", 1, "passing"}}},
		{"instance without a port is left out", HealthPassing,
			entry("a", "10.0.0.2", 0, none, api.HealthPassing), false, nil},
		{"service in maintenance is left out", HealthPassing, maintenance, false, nil},
		{"node in maintenance is left out", HealthPassing, nodeMaintenance, false, nil},
		{"connect-proxy instance is left out", HealthPassing, sidecar, false, nil},
		{"instance without checks is passing", HealthPassing,
			entry("a", "10.0.0.2", 8080, none), true, []instance{{"10.0.0.2:8080", 1, "passing"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := classify([]*api.ServiceEntry{tt.entry}, tt.mode, false)
			if len(got.all) != len(tt.all) {
				t.Fatalf("all = %+v, want %+v", got.all, tt.all)
			}
			for i, want := range tt.all {
				g := got.all[i]
				if g.Dial != want.dial || g.Weight != want.weight || g.Health != want.health || g.Datacenter != "dc1" {
					t.Errorf("instance = %+v, want %+v in dc1", g, want)
				}
			}
			if healthy := len(got.healthy) == 1; healthy != tt.healthy {
				t.Errorf("in rotation = %v, want %v", healthy, tt.healthy)
			}
		})
	}
}

func TestClassifyKeepsOrderTagsMetaAndNode(t *testing.T) {
	a := entry("a", "10.0.0.2", 1, api.AgentWeights{}, api.HealthPassing)
	a.Service.Tags, a.Service.Meta = []string{"v2", "blue"}, map[string]string{"version": "2"}
	b := entry("b", "10.0.0.3", 1, api.AgentWeights{}, api.HealthCritical)
	c := entry("c", "10.0.0.4", 1, api.AgentWeights{}, api.HealthPassing)
	got := classify([]*api.ServiceEntry{a, b, c}, HealthPassing, false)
	if ids := []string{got.healthy[0].ID, got.healthy[1].ID}; ids[0] != "a" || ids[1] != "c" {
		t.Errorf("healthy = %v, want [a c]", ids)
	}
	if len(got.all) != 3 || got.all[1].ID != "b" {
		t.Errorf("all = %+v, want a, b, c", got.all)
	}
	first := got.healthy[0]
	if first.Node != "node-a" || first.Meta["version"] != "2" || len(first.Tags) != 2 || first.Tags[1] != "blue" {
		t.Errorf("instance = %+v, want node, tags and meta carried over", first)
	}
}

func TestClassifyConnectCatalogCarriesIdentities(t *testing.T) {
	proxy := entry("db-sidecar", "10.0.0.2", 1, api.AgentWeights{}, api.HealthPassing)
	proxy.Service.Kind, proxy.Service.Service = api.ServiceKindConnectProxy, "db-sidecar-proxy"
	proxy.Service.Proxy = &api.AgentServiceConnectProxyConfig{DestinationServiceName: "db"}
	native := entry("db-native", "10.0.0.3", 1, api.AgentWeights{}, api.HealthPassing)
	native.Service.Service, native.Service.Namespace, native.Service.Partition = "db", "billing", "ENG"
	if got := classify([]*api.ServiceEntry{proxy, native}, HealthPassing, false); len(got.all) != 1 || got.all[0].Identity != nil {
		t.Errorf("outside Connect's catalog: %+v, want the native instance only, without identity", got.all)
	}
	got := classify([]*api.ServiceEntry{proxy, native}, HealthPassing, true)
	if len(got.healthy) != 2 {
		t.Fatalf("Connect's catalog: %+v, want the proxy and the native instance", got.healthy)
	}
	for i, want := range []string{"spiffe://td/ns/default/dc/dc1/svc/db", "spiffe://td/ap/eng/ns/billing/dc/dc1/svc/db"} {
		id := *got.healthy[i].Identity
		id.TrustDomain = "td"
		if id.String() != want {
			t.Errorf("%s presents %s, want %s", got.healthy[i].ID, id, want)
		}
	}
}
