package discovery_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddymesh/caddymesh/internal/meshtest"
)

// failingRouter is a handler whose Provision fails, after those before it
// in its route took what they take.
const failingRouter = `{"handler": "mesh_router", "consul": {"address": "ftp://127.0.0.1:1"}}`

// badLoad is a JSON config whose one route runs handler, then a handler
// that fails to provision.
func badLoad(consul string, port int, handler string) string {
	return fmt.Sprintf(`{
		%s,
		"apps": {
			"mesh": {"consul": {"address": %q}},
			"http": {"servers": {"s": {"listen": [":%d"], "routes": [{"handle": [%s, %s]}]}}}
		}
	}`, meshtest.AdminJSON(), consul, port, handler, failingRouter)
}

// modulesUnderLoad are a handler using each caddymesh module, with what it
// takes when provisioned: watches, goroutines.
var modulesUnderLoad = map[string]string{
	"consul source, fixed name":       `{"handler": "reverse_proxy", "dynamic_upstreams": {"source": "consul", "service": "leak-web"}}`,
	"consul source, placeholder name": `{"handler": "reverse_proxy", "dynamic_upstreams": {"source": "consul", "service": "{http.request.uri.path.0}"}}`,
	"smooth_weighted and consistent_hash": `{"handler": "subroute", "routes": [{"handle": [
		{"handler": "reverse_proxy", "upstreams": [{"dial": "127.0.0.1:1"}], "load_balancing": {"selection_policy": {"policy": "smooth_weighted"}}},
		{"handler": "reverse_proxy", "upstreams": [{"dial": "127.0.0.1:1"}], "load_balancing": {"selection_policy": {"policy": "consistent_hash"}}}]}]}`,
	"mesh_router":   `{"handler": "mesh_router", "meta_prefix": "leak-route"}`,
	"mesh_service":  `{"handler": "mesh_service", "service": "{http.request.uri.path.0}", "allow_services": ["*"]}`,
	"mesh_identity": `{"handler": "mesh_identity", "from": [{"source": "mtls"}], "intentions": {"source": "consul", "destination": "leak-api"}}`,
	"mesh_limit":    `{"handler": "mesh_limit", "rate": "10/s", "concurrency": 5, "queue": 2}`,
	"mesh_breaker":  `{"handler": "mesh_breaker", "key": "{http.request.host}"}`,
	"nothing else":  `{"handler": "static_response"}`,
}

// ownGoroutines counts the goroutines running caddymesh's own code.
func ownGoroutines() int {
	return meshtest.Goroutines("caddymesh/caddymesh/discovery.") + meshtest.Goroutines("caddymesh/caddymesh/middleware.") +
		meshtest.Goroutines("caddymesh/caddymesh/internal/keyed.") + meshtest.Goroutines("caddymesh/caddymesh/internal/consul.")
}

// watchSummary is what /mesh/services says: each watch and its users.
func watchSummary(t *testing.T) []string {
	var views []struct {
		Service, Datacenter string
		Routes              int
	}
	adminGet(t, http.MethodGet, "/mesh/services", &views)
	var out []string
	for _, v := range views {
		out = append(out, fmt.Sprintf("%s@%s: %d", v.Service, v.Datacenter, v.Routes))
	}
	return out
}

func TestAFailedLoadLeavesGoroutinesAndWatchesWhereTheyWere(t *testing.T) {
	p := meshtest.FreePort()
	meshtest.Load(t, fmt.Sprintf(`{
		%s,
		"apps": {"http": {"servers": {"s": {"listen": [":%d"], "routes": [{"handle": [
			{"handler": "reverse_proxy", "dynamic_upstreams": {"source": "consul", "service": "leak-kept", "consul": {"address": %q}}}
		]}]}}}}
	}`, meshtest.AdminJSON(), p, agent.Addr), "json")
	goroutines, watches := ownGoroutines(), watchSummary(t)
	if len(watches) == 0 || goroutines == 0 {
		t.Fatalf("the running config shows %d watches and %d goroutines of caddymesh; the counts would prove nothing", len(watches), goroutines)
	}
	for name, handler := range modulesUnderLoad {
		t.Run(name, func(t *testing.T) {
			for range 3 {
				if got := meshtest.LoadError(t, badLoad(agent.Addr, meshtest.FreePort(), handler), "json"); !strings.Contains(got, `scheme "ftp"`) {
					t.Fatalf("load error %q, want the failing router's", got)
				}
			}
			meshtest.Eventually(t, 5*time.Second, "the failed loads' goroutines to end", func() bool { return ownGoroutines() <= goroutines })
			if now := watchSummary(t); !slices.Equal(now, watches) {
				t.Errorf("watches after three failed loads: %q, want those before: %q", now, watches)
			}
		})
	}
	if t.Failed() {
		t.Log(meshtest.GoroutineSummary())
	}
}

func TestSIGTERMStopsCaddyWhateverAFailedLoadLeftBehind(t *testing.T) {
	admin := fmt.Sprintf("127.0.0.1:%d", meshtest.FreePort())
	caddyfile := filepath.Join(t.TempDir(), "Caddyfile")
	config := fmt.Sprintf(`{
	admin %s
	persist_config off
	grace_period 1s
	mesh {
		consul {
			address %s
		}
	}
}
:%d {
	mesh_router {
		fallback next
	}
	respond ok
}
`, admin, agent.Addr, meshtest.FreePort())
	if err := os.WriteFile(caddyfile, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	caddy := meshtest.StartCaddy(t, caddyfile, admin)
	// Each load restarts Caddy's admin server, which closes the connection
	// the last answer came on: a new connection for each load.
	loader := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for _, handler := range modulesUnderLoad {
		resp, err := loader.Post("http://"+admin+"/load", "application/json",
			strings.NewReader(strings.Replace(badLoad(agent.Addr, meshtest.FreePort(), handler), meshtest.AdminJSON(), fmt.Sprintf(`"admin": {"listen": %q}`, admin), 1)))
		if err != nil {
			t.Fatalf("POST /load of a config that cannot provision got no answer: %v", err)
		}
		var answer struct{ Error string }
		json.NewDecoder(resp.Body).Decode(&answer)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK || !strings.Contains(answer.Error, `scheme "ftp"`) {
			t.Fatalf("POST /load: %d %q, want the failing router's error", resp.StatusCode, answer.Error)
		}
	}
	// A bound to tell a stop from a hang, far above the grace period and
	// drain-free config's real stop time.
	if took := caddy.Stop(t); took > 15*time.Second {
		t.Errorf("caddy took %s to stop after SIGTERM, with a grace period of 1s", took)
	}
}
