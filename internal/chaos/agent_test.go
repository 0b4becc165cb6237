package chaos_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddymesh/caddymesh/internal/loadgen"
	"github.com/caddymesh/caddymesh/internal/meshtest"
)

// Scenario 7: the client agent that the sidecars and the front share
// stopped with SIGTERM, as a rolling upgrade of Consul agents does: it
// leaves the cluster, taking its node and every service registered through
// it out of the catalog, and comes back with its data dir. With hold_last
// (default 10s) the front keeps its last instances through the gap; with
// hold_last 0 it answers 503 until they are back. The servers are a dev
// agent in the short form, three servers in the long form.
func TestClientAgentLeaves(t *testing.T) {
	dc := startDatacenter(t, sized(0, 3))
	var ids []string
	for i := range 2 {
		id := fmt.Sprintf("b-%d", i+1)
		startSidecar(t, dc.client.Addr, id, 0)
		ids = append(ids, id)
	}
	awaitPassing(t, dc.server, ids...)
	for _, c := range []struct {
		name     string
		holdLast string
	}{
		{"`hold_last 0`", "0"},
		{"`hold_last` default (10s)", ""},
	} {
		config := readme(dc.counter.Addr())
		config.HoldLast = c.holdLast
		f := startFront(t, config.caddyfile, "/")
		awaitRouted(t, f, ids)
		before := dc.counter.Requests("")
		load := loadgen.Start(newClient(t), rate, f.url+"/")
		time.Sleep(500 * time.Millisecond)
		left := time.Now()
		dc.client.Leave()
		time.Sleep(sized(time.Second, 2*time.Second))
		if err := dc.client.Restart(); err != nil {
			t.Fatal(err)
		}
		awaitPassing(t, dc.server, ids...)
		back := time.Since(left)
		awaitRouted(t, f, ids)
		converged := time.Since(left)
		time.Sleep(500 * time.Millisecond)
		result := load.Stop()
		record(t, fmt.Sprintf("7. client agent SIGTERM (leave) and back, %s, %s", c.name, sized("dev server", "3 servers")), result,
			fmt.Sprintf("instances passing in the catalog again %s after the leave, routed %s after it; %d Consul requests from the front",
				back.Round(10*time.Millisecond), converged.Round(10*time.Millisecond), dc.counter.Requests("")-before))
		if c.holdLast == "" {
			expectNoFailure(t, result, "while the shared client agent left and came back")
		} else if result.Failed == 0 {
			t.Logf("with hold_last 0 no request failed either: the front saw an error before the empty answer")
		}
		f.proc.Stop(t)
	}
}

// Scenario 10: the client agent that two sidecars register through killed
// hard (SIGKILL) and restarted at once with a fresh data dir, as a host
// rebuilt after a crash: it comes back under its node name with a new node
// ID, and the servers, which still hold the old node alive, refuse its
// updates ("Node name ... is reserved"). The sidecars register again with
// the agent, which keeps them locally; the servers' catalog keeps the old
// entries. Each sidecar's /mesh/registrations must say so (agent_only,
// with the servers' catalog in the reason, or failing with what failed),
// not registered. The front, whose old entries
// still point at the running sidecars, fails no request.
func TestClientAgentRestartedWithFreshDataDir(t *testing.T) {
	dc := startDatacenter(t, sized(0, 3))
	sidecars := []*sidecar{startSidecar(t, dc.client.Addr, "b-1", 0), startSidecar(t, dc.client.Addr, "b-2", 0)}
	awaitPassing(t, dc.server, "b-1", "b-2")
	for _, s := range sidecars {
		awaitRegistration(t, s, func(r registrationState) bool { return r.State == "registered" })
	}
	f := startFront(t, readme(dc.counter.Addr()).caddyfile, "/")
	awaitRouted(t, f, []string{"b-1", "b-2"})

	before := dc.counter.Requests("")
	load := loadgen.Start(newClient(t), rate, f.url+"/")
	time.Sleep(500 * time.Millisecond)
	killed := time.Now()
	dc.client.Kill()
	if err := dc.client.RestartWithFreshDataDir(); err != nil {
		t.Fatal(err)
	}
	restarted := time.Since(killed)
	var states []string
	defer func() {
		if t.Failed() {
			t.Logf("the client agent's log:\n%s", dc.client.Log())
		}
	}()
	for _, s := range sidecars {
		// agent_only names the servers' catalog; failing names what failed:
		// the restarted agent sometimes answers its registrations with EOF
		// for tens of seconds (seen under load), which the registrar reports
		// as it is. Either way not registered, which is what the servers say.
		r := awaitRegistration(t, s, func(r registrationState) bool {
			return (r.State == "agent_only" && strings.Contains(r.Error, "catalog")) || (r.State == "failing" && r.Error != "")
		})
		states = append(states, r.State)
		t.Logf("%s: %s: %s", s.id, r.State, r.Error)
	}
	told := time.Since(killed)
	time.Sleep(sized(time.Second, 5*time.Second))
	result := load.Stop()
	record(t, "10. client agent SIGKILL, restarted with a fresh data dir", result, fmt.Sprintf(
		"agent back in %s (the servers refuse its new node ID); the sidecars' registrations said %s, with the reason, %s after the kill; %d Consul requests from the front",
		restarted.Round(10*time.Millisecond), strings.Join(states, " and "), told.Round(10*time.Millisecond), dc.counter.Requests("")-before))
	expectNoFailure(t, result, "while the client agent was killed and restarted with a fresh data dir")
}

// registrationState is where a sidecar's registration stands, from its
// /mesh/registrations.
type registrationState struct {
	State string
	Error string
}

// awaitRegistration waits until the sidecar's only registration satisfies
// cond, and returns it.
func awaitRegistration(t *testing.T, s *sidecar, cond func(registrationState) bool) registrationState {
	t.Helper()
	var last []registrationState
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		status, body := meshtest.Get("http://" + s.admin + "/mesh/registrations")
		last = nil
		if status == http.StatusOK && json.Unmarshal([]byte(body), &last) == nil && len(last) == 1 && cond(last[0]) {
			return last[0]
		}
		time.Sleep(100 * time.Millisecond)
	}
	_, stacks := meshtest.Get("http://" + s.admin + "/debug/pprof/goroutine?debug=2")
	t.Fatalf("%s's registration did not get where the test waits for within 30s: %+v\n%s\ngoroutines:\n%s", s.id, last, s.proc.Log(), stacks)
	return registrationState{}
}
