package discovery_test

import (
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/caddymesh/caddymesh/internal/consultest"
	"github.com/caddymesh/caddymesh/internal/meshtest"
)

const secretToken = "f00dfeed-secret-acl-token"

// adminConfig watches service adm (tag blue) with an ACL token from the
// environment, and registers the site as adm-site.
func adminConfig(t *testing.T) {
	t.Setenv("MESH_TEST_TOKEN", secretToken) // the dev agent has no ACLs: any token goes
	backends(t, "adm", map[string]string{"b": api.HealthCritical}, "a", "b")
	for _, id := range []string{"adm-a", "adm-b"} {
		inst := instance(t, agent, id)
		agent.Register(t, consultest.Instance{Service: "adm", ID: id, Port: inst.Port, Tags: []string{"blue"},
			Status: map[string]string{"adm-a": api.HealthPassing, "adm-b": api.HealthCritical}[id]})
	}
	port := meshtest.FreePort()
	meshtest.Load(t, fmt.Sprintf(`{
	%s
	mesh {
		consul {
			address %s
			token   {env.MESH_TEST_TOKEN}
		}
		register adm-site {
			id    adm-site-1
			port  %d
			drain 10ms
		}
	}
}
:%d {
	reverse_proxy {
		dynamic consul adm {
			tag blue
		}
	}
}`, meshtest.Globals(), agent.Addr, port, port), "caddyfile")
	meshtest.Eventually(t, propagation, "the site is registered", func() bool {
		views := registrations(t)
		return len(views) == 1 && views[0]["state"] == "registered"
	})
}

// adminGet fetches an admin endpoint, decoding its JSON into out.
var adminGet = meshtest.AdminGet

func TestAdminAPI(t *testing.T) {
	adminConfig(t)

	var services []map[string]any
	status, body := adminGet(t, http.MethodGet, "/mesh/services", &services)
	if status != http.StatusOK || len(services) != 1 {
		t.Fatalf("GET /mesh/services: %d %s", status, body)
	}
	s := services[0]
	for field, want := range map[string]any{
		"service": "adm", "health": "passing", "consistency": "stale", "consul": agent.Addr,
		"routes": 1.0, "healthy": 1.0, "total": 2.0,
	} {
		if s[field] != want {
			t.Errorf("%s = %v, want %v", field, s[field], want)
		}
	}
	if tags, _ := s["tags"].([]any); len(tags) != 1 || tags[0] != "blue" {
		t.Errorf("tags = %v, want [blue]", s["tags"])
	}
	for _, field := range []string{"snapshot_version", "consul_index"} {
		if n, _ := s[field].(float64); n < 1 {
			t.Errorf("%s = %v, want a positive number", field, s[field])
		}
	}
	if _, err := time.Parse(time.RFC3339Nano, fmt.Sprint(s["last_sync"])); err != nil || s["staleness"] != "0s" {
		t.Errorf("last_sync %v, staleness %v: want a time, and no staleness while the watch is healthy", s["last_sync"], s["staleness"])
	}
	instances, _ := s["instances"].([]any)
	if len(instances) != 2 {
		t.Fatalf("instances = %v, want both, healthy or not", s["instances"])
	}
	first := instances[0].(map[string]any)
	for _, field := range []string{"dial", "weight", "health", "node", "datacenter", "tags"} {
		if first[field] == nil {
			t.Errorf("instance lacks %s: %v", field, first)
		}
	}

	if status, body := adminGet(t, http.MethodGet, "/mesh/services/adm", &services); status != http.StatusOK || len(services) != 1 {
		t.Errorf("GET /mesh/services/adm: %d %s", status, body)
	}
	var failure struct{ Error string }
	if status, _ := adminGet(t, http.MethodGet, "/mesh/services/nope", &failure); status != http.StatusNotFound || !strings.Contains(failure.Error, `"nope" is not watched`) {
		t.Errorf("GET /mesh/services/nope: %d %q, want 404 with a JSON error", status, failure.Error)
	}
	if status, body := adminGet(t, http.MethodGet, "/mesh/services/", &failure); status != http.StatusNotFound {
		t.Errorf("GET /mesh/services/ (no name): %d %s, want 404, not every watch", status, body)
	}
	if status, _ := adminGet(t, http.MethodPost, "/mesh/services", &failure); status != http.StatusMethodNotAllowed || failure.Error == "" {
		t.Errorf("POST /mesh/services: %d %q, want 405 with a JSON error", status, failure.Error)
	}
	var regs []map[string]any
	if status, body := adminGet(t, http.MethodGet, "/mesh/registrations", &regs); status != http.StatusOK ||
		len(regs) != 1 || regs[0]["id"] != "adm-site-1" || regs[0]["state"] != "registered" {
		t.Errorf("GET /mesh/registrations: %d %s", status, body)
	}

	for _, path := range []string{"/mesh/services", "/mesh/services/adm", "/mesh/registrations", "/config/", "/metrics"} {
		if _, body := meshtest.Get(meshtest.AdminURL() + path); strings.Contains(body, secretToken) {
			t.Errorf("GET %s reveals the ACL token", path)
		}
	}
}

func TestMetricsAreServedByCaddy(t *testing.T) {
	adminConfig(t)
	wants := []string{
		`caddy_mesh_instances{service="adm",state="healthy"} 1`,
		`caddy_mesh_instances{service="adm",state="critical"} 1`,
		`caddy_mesh_watchers 1`,
		`caddy_mesh_registrations{service="adm-site",state="registered"} 1`,
		`caddy_mesh_consul_requests_total{result="ok",service="adm"}`,
		`caddy_mesh_snapshot_updates_total{service="adm"}`,
		`caddy_mesh_snapshot_age_seconds{service="adm"}`,
		`caddy_mesh_consul_request_duration_seconds_bucket`,
	}
	var body string
	missing := func() []string {
		_, body = meshtest.Get(meshtest.AdminURL() + "/metrics")
		var out []string
		for _, want := range wants {
			if !strings.Contains(body, want) {
				out = append(out, want)
			}
		}
		return out
	}
	deadline := time.Now().Add(propagation)
	for len(missing()) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	for _, want := range missing() {
		t.Errorf("metrics lack %s", want)
	}
	if regexp.MustCompile(`caddy_mesh_\w+\{[^}]*127\.0\.0\.1`).MatchString(body) {
		t.Error("a mesh metric has an instance address as a label")
	}
}

func TestEventsAreEmitted(t *testing.T) {
	backends(t, "evt", nil, "a")
	other, err := consultest.Start(consultest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Stop()
	other.Register(t, consultest.Instance{Service: "evt-other", ID: "evt-other-1", Port: 9})
	meshtest.Load(t, fmt.Sprintf(`{
		%s,
		"apps": {
			"events": {"subscriptions": [{
				"events": ["mesh.upstreams_changed", "mesh.consul_unreachable", "mesh.consul_recovered"],
				"handlers": [{"handler": "mesh_test_recorder"}]
			}]},
			"mesh": {"consul": {"address": %q}},
			"http": {"servers": {"s": {"listen": [":%d"], "routes": [
				{"match": [{"path": ["/other"]}], "handle": [{"handler": "reverse_proxy",
					"dynamic_upstreams": {"source": "consul", "service": "evt-other", "consul": {"address": %q}}}]},
				{"handle": [{"handler": "reverse_proxy", "dynamic_upstreams": {"source": "consul", "service": "evt"}}]}
			]}}}
		}
	}`, meshtest.AdminJSON(), agent.Addr, meshtest.FreePort(), other.Addr), "json")

	agent.SetStatus(t, "evt-a", api.HealthCritical)
	if e := meshtest.AwaitEvent(t, "mesh.upstreams_changed", "service", "evt"); e.Data["healthy"] != 0 || e.Data["total"] != 1 {
		t.Errorf("after the check failed: %v, want healthy 0 of 1", e.Data)
	}
	agent.SetStatus(t, "evt-a", api.HealthPassing)
	if e := meshtest.AwaitEvent(t, "mesh.upstreams_changed", "service", "evt"); e.Data["healthy"] != 1 {
		t.Errorf("after the check passed again: %v, want healthy 1", e.Data)
	}
	other.Kill()
	meshtest.AwaitEvent(t, "mesh.consul_unreachable", "service", "evt-other")
	if err := other.Restart(); err != nil {
		t.Fatal(err)
	}
	meshtest.AwaitEvent(t, "mesh.consul_recovered", "service", "evt-other")
	meshtest.Load(t, fmt.Sprintf("{\n\t%s\n}\n", meshtest.Globals()), "caddyfile")
}
