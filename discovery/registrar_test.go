package discovery_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/caddymesh/caddymesh/discovery"
	"github.com/caddymesh/caddymesh/internal/consultest"
	"github.com/caddymesh/caddymesh/internal/meshtest"
)

// registeredConfig is a config whose mesh app, on consul at address,
// registers the site on port with the given extra register options.
func registeredConfig(address string, port int, options, site string) string {
	return fmt.Sprintf(`{
	%s
	mesh {
		consul {
			address %s
		}
		register registered {
			id   registered-1
			port %d
			%s
		}
	}
}
:%d {
	%s
}`, meshtest.Globals(), address, port, options, port, site)
}

// instance returns the registered instance as the agent has it, or nil.
func instance(t *testing.T, a *consultest.Agent, id string) *api.AgentService {
	t.Helper()
	services, err := a.Client.Agent().Services()
	if err != nil {
		return nil
	}
	return services[id]
}

// catalogIndex returns the catalog's modify index of instance id.
func catalogIndex(t *testing.T, service, id string) uint64 {
	t.Helper()
	entries, _, err := agent.Client.Catalog().Service(service, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.ServiceID == id {
			return e.ModifyIndex
		}
	}
	t.Fatalf("%s is not in the catalog", id)
	return 0
}

func TestRegistrationLifecycle(t *testing.T) {
	port := meshtest.FreePort()
	options := `tags    v1 blue
			meta    version 1
			weights 3 1
			check   http http://127.0.0.1:` + strconv.Itoa(port) + `/health
			interval 1s
			drain   50ms`
	meshtest.Load(t, registeredConfig(agent.Addr, port, options, "respond ok"), "caddyfile")
	meshtest.Eventually(t, propagation, "the instance is registered", func() bool {
		return instance(t, agent, "registered-1") != nil
	})
	got := instance(t, agent, "registered-1")
	if got.Service != "registered" || got.Port != port || !slices.Equal(got.Tags, []string{"v1", "blue"}) ||
		got.Meta["version"] != "1" || got.Weights.Passing != 3 || got.Weights.Warning != 1 {
		t.Errorf("registered %+v", got)
	}
	checks, _, err := agent.Client.Health().Checks("registered", nil)
	if err != nil || len(checks) != 1 || checks[0].Type != "http" {
		t.Fatalf("checks %+v (%v), want one http check", checks, err)
	}

	t.Run("a reload that keeps the registration leaves Consul alone", func(t *testing.T) {
		before := catalogIndex(t, "registered", "registered-1")
		meshtest.Load(t, registeredConfig(agent.Addr, port, options, "respond changed"), "caddyfile")
		time.Sleep(200 * time.Millisecond)
		if after := catalogIndex(t, "registered", "registered-1"); after != before {
			t.Errorf("the instance's catalog entry changed (index %d, then %d): it was registered again", before, after)
		}
	})
	t.Run("a reload that changes the registration updates it", func(t *testing.T) {
		meshtest.Load(t, registeredConfig(agent.Addr, port, options+"\n\t\t\ttags v2", "respond ok"), "caddyfile")
		meshtest.Eventually(t, propagation, "the tags are updated", func() bool {
			got := instance(t, agent, "registered-1")
			return got != nil && slices.Equal(got.Tags, []string{"v1", "blue", "v2"})
		})
	})
	t.Run("a reload that drops the registration takes it out", func(t *testing.T) {
		meshtest.Load(t, fmt.Sprintf("{\n\t%s\n}\n:%d {\n\trespond ok\n}", meshtest.Globals(), port), "caddyfile")
		if instance(t, agent, "registered-1") != nil {
			t.Error("the instance is still registered once the reload is done")
		}
	})
}

func TestRegistrationRetriesUntilConsulAnswers(t *testing.T) {
	consulPort, port := meshtest.FreePort(), meshtest.FreePort()
	address := "127.0.0.1:" + strconv.Itoa(consulPort)
	start := time.Now()
	meshtest.Load(t, registeredConfig(address, port, "drain 10ms", "respond ok"), "caddyfile")
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("loading took %s with Consul down: it must not wait for Consul", took)
	}
	meshtest.Eventually(t, propagation, "the registration is reported failing", func() bool {
		views := registrations(t)
		return len(views) == 1 && views[0]["state"] == "failing" && views[0]["error"] != ""
	})

	late, err := consultest.Start(consultest.Options{HTTPPort: consulPort})
	if err != nil {
		t.Fatal(err)
	}
	defer late.Stop()
	meshtest.Eventually(t, 10*time.Second, "the instance is registered once Consul is up", func() bool {
		return instance(t, late, "registered-1") != nil
	})

	late.Kill()
	if err := late.Restart(); err != nil {
		t.Fatal(err)
	}
	meshtest.Eventually(t, 10*time.Second, "the instance is registered again in the restarted, empty agent", func() bool {
		return instance(t, late, "registered-1") != nil
	})
	meshtest.Load(t, fmt.Sprintf("{\n\t%s\n}\n", meshtest.Globals()), "caddyfile")
}

// A call to the agent that never returns, its request lost on a
// connection the agent's crash left half-open, is given up and made again:
// the registration gets through instead of waiting for good.
func TestRegistrationGivesUpACallTheAgentNeverAnswers(t *testing.T) {
	proxy := meshtest.StartConsulProxy(t, agent.Addr)
	proxy.Set(meshtest.ConsulLoses)
	port := meshtest.FreePort()
	meshtest.Load(t, registeredConfig(proxy.Addr(), port, "drain 10ms", "respond ok"), "caddyfile")
	defer meshtest.Load(t, fmt.Sprintf("{\n\t%s\n}\n", meshtest.Globals()), "caddyfile")
	const register = "/v1/agent/service/register"
	meshtest.Eventually(t, propagation, "the registration is sent, and lost", func() bool {
		return proxy.Requests(register) == 1
	})
	proxy.Set(meshtest.ConsulAnswers)
	meshtest.Eventually(t, 3*discovery.AgentTimeout, "the instance is registered", func() bool {
		return instance(t, agent, "registered-1") != nil
	})
	if n := proxy.Requests(register); n < 2 {
		t.Errorf("%d registrations sent, want the lost one, given up, then another", n)
	}
}

func TestRegistrationReportsItsTTLCheck(t *testing.T) {
	port := meshtest.FreePort()
	meshtest.Load(t, registeredConfig(agent.Addr, port, "check ttl\n\t\t\tinterval 1s\n\t\t\tdrain 10ms", "respond ok"), "caddyfile")
	defer meshtest.Load(t, fmt.Sprintf("{\n\t%s\n}\n", meshtest.Globals()), "caddyfile")
	time.Sleep(2500 * time.Millisecond) // more than two TTLs
	checks, _, err := agent.Client.Health().Checks("registered", nil)
	if err != nil || len(checks) != 1 || checks[0].Type != "ttl" || checks[0].Status != api.HealthPassing {
		t.Errorf("checks %+v (%v), want one passing ttl check", checks, err)
	}
}

// registrations returns what the admin API says is registered.
func registrations(t *testing.T) []map[string]any {
	t.Helper()
	var views []map[string]any
	status, body := meshtest.Get(meshtest.AdminURL() + "/mesh/registrations")
	if status != 200 {
		t.Fatalf("GET /mesh/registrations: %d %s", status, body)
	}
	if err := json.Unmarshal([]byte(body), &views); err != nil {
		t.Fatal(err)
	}
	return views
}

func TestDrainingSidecarLosesNoRequest(t *testing.T) {
	var sidecars []*meshtest.CaddyProcess
	for _, name := range []string{"b-1", "b-2"} {
		app := meshtest.StartBackend(t, name)
		admin := fmt.Sprintf("localhost:%d", meshtest.FreePort())
		sidecars = append(sidecars, meshtest.StartCaddy(t, "../examples/sidecars/b.Caddyfile", admin,
			"PORT="+strconv.Itoa(meshtest.FreePort()), "APP="+app.Addr(), "INSTANCE="+name,
			"ADMIN="+admin, "DRAIN=2s", "CONSUL_HTTP_ADDR="+agent.Addr))
	}
	callerPort, callerAdmin := meshtest.FreePort(), fmt.Sprintf("localhost:%d", meshtest.FreePort())
	meshtest.StartCaddy(t, "../examples/sidecars/a.Caddyfile", callerAdmin,
		"PORT="+strconv.Itoa(callerPort), "ADMIN="+callerAdmin, "CONSUL_HTTP_ADDR="+agent.Addr)
	url := fmt.Sprintf("http://127.0.0.1:%d/", callerPort)
	// Consul's part first (each sidecar registers, then its check runs and
	// passes), then A's: a failure says which one was slow.
	meshtest.EventuallyEquals(t, 30*time.Second, "Consul lists both of B's sidecars passing", "b-1,b-2", func() string {
		return agent.PassingIDs("b")
	})
	meshtest.EventuallyEquals(t, 10*time.Second, "A reaches both of B's sidecars", "b-1,b-2", func() string {
		return reached(url, 20)
	})

	traffic := meshtest.StartTraffic(url, 4)
	time.Sleep(500 * time.Millisecond)
	took := sidecars[0].Stop(t)
	time.Sleep(500 * time.Millisecond)
	traffic.Stop(t, fmt.Sprintf("through A while b-1's sidecar stopped in %s", took.Round(time.Millisecond)))
	if took < 2*time.Second {
		t.Errorf("b-1's sidecar stopped in %s, before its 2s drain", took)
	}
	if instance(t, agent, "b-1") != nil {
		t.Error("b-1 is still registered after its sidecar stopped")
	}
	if got := reached(url, 20); got != "b-2" {
		t.Errorf("A reached %s after b-1 stopped, want b-2", got)
	}
}
