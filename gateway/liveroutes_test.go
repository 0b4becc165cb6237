package gateway_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/caddymesh/caddymesh/internal/meshtest"
)

// admin sends a request to Caddy's admin API and fails the test unless it
// succeeds.
func admin(t *testing.T, method, path, body string) {
	t.Helper()
	req, err := http.NewRequest(method, meshtest.AdminURL()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Close = true // Caddy restarts its admin server on each change: no keep-alive
	resp, err := meshtest.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		answer, _ := io.ReadAll(resp.Body)
		t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, answer)
	}
}

// watchedServices returns how many watches the admin API lists.
func watchedServices(t *testing.T) int {
	var views []map[string]any
	adminGet(t, http.MethodGet, "/mesh/services", &views)
	return len(views)
}

// TestLiveRouteManagement changes routes through Caddy's own admin API
// while traffic flows on other routes: a route to a new Consul service is
// added, used, given another policy and deleted, a hundred times. Of the
// untouched routes, one proxies to Consul's instances and one to a static
// upstream, the peer that shows what stock Caddy itself does across
// reloads.
func TestLiveRouteManagement(t *testing.T) {
	backends(t, "live-steady", nil, "steady")
	backends(t, "live-new", nil, "new")
	static := meshtest.StartBackend(t, "static")
	port := meshtest.FreePort()
	// Upstream keep-alive is off so that goroutines can be counted exactly:
	// see TestReloadsShareOneWatcherPerKeyAndLeakNothing.
	const transport = `"transport": {"protocol": "http", "keep_alive": {"enabled": false}}`
	meshtest.Load(t, fmt.Sprintf(`{
		%s,
		"apps": {
			"mesh": {"consul": {"address": %q}},
			"http": {"servers": {"srv": {"listen": [":%d"], "routes": [
				{"@id": "steady", "match": [{"path": ["/steady/*"]}], "handle": [{"handler": "reverse_proxy", %s,
					"dynamic_upstreams": {"source": "consul", "service": "live-steady"}}]},
				{"@id": "static", "match": [{"path": ["/static/*"]}], "handle": [{"handler": "reverse_proxy", %s,
					"upstreams": [{"dial": %q}]}]}
			]}}}
		}
	}`, meshtest.AdminJSON(), agent.Addr, port, transport, transport, static.Addr()), "json")
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	newRoute := fmt.Sprintf(`{"@id": "live", "match": [{"path": ["/new/*"]}], "handle": [{"handler": "reverse_proxy", %s,
		"dynamic_upstreams": {"source": "consul", "service": "live-new"},
		"load_balancing": {"selection_policy": {"policy": "round_robin"}}}]}`, transport)

	step := func(i int) {
		admin(t, http.MethodPost, "/config/apps/http/servers/srv/routes", newRoute) // appends

		if n := watchedServices(t); n != 2 {
			t.Fatalf("cycle %d, route added: %d watches, want 2", i, n)
		}
		if status, body := meshtest.GetAfterReload(base + "/new/x"); status != http.StatusOK || body != "new" {
			t.Fatalf("cycle %d: the new route answered %d %q", i, status, body)
		}
		admin(t, http.MethodPatch, "/id/live/handle/0/load_balancing/selection_policy", `{"policy": "smooth_weighted"}`)
		if n := watchedServices(t); n != 2 {
			t.Fatalf("cycle %d, policy changed: %d watches, want 2", i, n)
		}
		if status, body := meshtest.GetAfterReload(base + "/new/x"); status != http.StatusOK || body != "new" {
			t.Fatalf("cycle %d, smooth_weighted: the new route answered %d %q", i, status, body)
		}
		admin(t, http.MethodDelete, "/id/live", "")
		if n := meshtest.Goroutines(watchLoop); n != 1 {
			t.Fatalf("cycle %d, route deleted: %d watch loops running, want only the steady route's", i, n)
		}
	}

	traffic := meshtest.StartTraffic(base+"/steady/x", 2)
	stock := meshtest.StartTraffic(base+"/static/x", 2)
	step(0)
	meshtest.Client.CloseIdleConnections()
	baseline := settledGoroutines()
	for i := 1; i <= 100; i++ {
		step(i)
	}
	const reloads = 303
	traffic.StopAcrossReloads(t, "on the untouched consul route during 101 add/patch/delete cycles", reloads)
	stock.StopAcrossReloads(t, "on the untouched static route (stock Caddy) meanwhile", reloads)
	meshtest.Client.CloseIdleConnections()
	if after := settledGoroutines(); after > baseline {
		t.Errorf("%d goroutines after 100 cycles, %d before\n%s", after, baseline, meshtest.GoroutineSummary())
	}
}

// TestGatewayExampleRecipe runs the README's live-route recipe against
// examples/gateway.json.
func TestGatewayExampleRecipe(t *testing.T) {
	backends(t, "greeter", nil, "greeter-1")
	backends(t, "orders", nil, "orders-1")
	var config map[string]any
	if err := json.Unmarshal(mustReadFile(t, "../examples/gateway.json"), &config); err != nil {
		t.Fatal(err)
	}
	port := meshtest.FreePort()
	apps := config["apps"].(map[string]any)
	apps["mesh"].(map[string]any)["consul"].(map[string]any)["address"] = agent.Addr
	apps["http"].(map[string]any)["servers"].(map[string]any)["gateway"].(map[string]any)["listen"] = []string{fmt.Sprintf(":%d", port)}
	config["admin"] = map[string]any{"listen": fmt.Sprintf("localhost:%d", meshtest.AdminPort), "config": map[string]any{"persist": false}}
	data, _ := json.Marshal(config)
	meshtest.Load(t, string(data), "json")
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	if status, body := meshtest.Get(base + "/orders/1"); status != http.StatusOK || body != "greeter-1" {
		t.Fatalf("before the recipe, /orders/1 answered %d %q, want the catch-all greeter", status, body)
	}

	admin(t, http.MethodPut, "/config/apps/http/servers/gateway/routes/0", `{
		"@id": "orders",
		"match": [{"path": ["/orders/*"]}],
		"handle": [{
			"handler": "reverse_proxy",
			"dynamic_upstreams": {"source": "consul", "service": "orders"},
			"load_balancing": {"selection_policy": {"policy": "round_robin"}}
		}]
	}`)
	if status, body := meshtest.GetAfterReload(base + "/orders/1"); status != http.StatusOK || body != "orders-1" {
		t.Errorf("after adding the route, /orders/1 answered %d %q", status, body)
	}
	admin(t, http.MethodPatch, "/id/orders/handle/0/load_balancing/selection_policy", `{"policy": "smooth_weighted"}`)
	if status, body := meshtest.GetAfterReload(base + "/orders/1"); status != http.StatusOK || body != "orders-1" {
		t.Errorf("after changing the policy, /orders/1 answered %d %q", status, body)
	}
	admin(t, http.MethodDelete, "/id/orders", "")
	if status, body := meshtest.GetAfterReload(base + "/orders/1"); status != http.StatusOK || body != "greeter-1" {
		t.Errorf("after removing the route, /orders/1 answered %d %q, want the catch-all greeter", status, body)
	}
	if len(watchViewsOf(t, "orders")) != 0 {
		t.Error("the removed route's watch still runs")
	}
}

// watchViewsOf returns the admin API's watches of service.
func watchViewsOf(t *testing.T, service string) []map[string]any {
	status, body := adminGet(t, http.MethodGet, "/mesh/services/"+service, nil)
	if status == http.StatusNotFound {
		return nil
	}
	var views []map[string]any
	if err := json.Unmarshal([]byte(body), &views); err != nil {
		t.Fatal(err)
	}
	return views
}

func mustReadFile(t *testing.T, name string) []byte {
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return data
}
