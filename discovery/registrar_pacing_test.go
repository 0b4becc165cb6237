package discovery

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/caddymesh/caddymesh/internal/consul"
	"github.com/caddymesh/caddymesh/internal/consultest"
	"github.com/caddymesh/caddymesh/internal/meshtest"
)

// failingAgent accepts every registration, then fails every other
// request, as an agent that lost its servers' trust or its disk might;
// past limit requests it hangs, so that a test counts a bounded run.
type failingAgent struct {
	srv       *httptest.Server
	clock     *consultest.Clock
	limit     int
	mu        sync.Mutex
	requests  int
	registers []time.Time // on the registrar's clock
}

func newFailingAgent(t *testing.T, c *consultest.Clock, limit int) *failingAgent {
	a := &failingAgent{clock: c, limit: limit}
	stop := make(chan struct{})
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.requests++
		n := a.requests
		if r.URL.Path == "/v1/agent/service/register" {
			a.registers = append(a.registers, c.Now())
		}
		a.mu.Unlock()
		if n > a.limit {
			select {
			case <-r.Context().Done():
			case <-stop:
			}
			return
		}
		if r.URL.Path == "/v1/agent/service/register" {
			return
		}
		http.Error(w, "injected failure", http.StatusInternalServerError)
	}))
	t.Cleanup(a.srv.Close)
	t.Cleanup(func() { close(stop) }) // first: let hanging requests go
	return a
}

func (a *failingAgent) seen() (int, []time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.requests, append([]time.Time(nil), a.registers...)
}

func TestRegistrarBacksOffWhenKeepingFails(t *testing.T) {
	const limit = 20
	c := consultest.NewClock(true)
	agent := newFailingAgent(t, c, limit)
	spec := &Registration{Name: "web", ID: "web-1", Port: 8080}
	if err := spec.prepare(); err != nil {
		t.Fatal(err)
	}
	want, err := newWantedRegistration(spec, mustResolve(t, agent.srv.URL))
	if err != nil {
		t.Fatal(err)
	}
	r := newRegistrar(want, c)
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go r.run(ctx)
	defer r.deregister()

	meshtest.Eventually(t, 10*time.Second, "the bounded run is over", func() bool {
		n, _ := agent.seen()
		return n > limit
	})
	n, registers := agent.seen()
	// Each cycle is a registration and one request that fails: the
	// registrar never asks twice in a row without a pause.
	if got, wantCycles := len(registers), (limit+1)/2; got < wantCycles-1 || got > wantCycles+1 {
		t.Errorf("%d registrations in %d requests, want about %d: one per failed keep", got, n, wantCycles)
	}
	for k := 1; k < len(registers); k++ {
		gap := registers[k].Sub(registers[k-1])
		full := min(consul.RetryBase<<(k-1), consul.RetryMax)
		if gap < full/2 || gap > full+consul.QueryInterval+time.Millisecond { // a limiter rounds to the nanosecond
			t.Errorf("after failure %d the registrar waited %s before registering again, want from %s to %s", k, gap, full/2, full+consul.QueryInterval)
		}
	}
	if status := r.status.Load(); status.State != stateFailing || !strings.Contains(status.Error, "asking the agent") {
		t.Errorf("state %s (%s), want failing, naming the agent", status.State, status.Error)
	}
}

func TestCatalogState(t *testing.T) {
	passing := api.HealthChecks{{Status: api.HealthPassing}}
	entry := func(nodeID string, checks api.HealthChecks) *api.ServiceEntry {
		return &api.ServiceEntry{Node: &api.Node{Node: "n1", ID: nodeID}, Service: &api.AgentService{ID: "web-1"}, Checks: checks}
	}
	tests := []struct {
		name    string
		entries []*api.ServiceEntry
		nodeID  string
		want    string
		reason  string
	}{
		{"listed on this agent's node, passing", []*api.ServiceEntry{entry("new", passing)}, "new", stateRegistered, ""},
		{"node ID unknown: any entry", []*api.ServiceEntry{entry("old", passing)}, "", stateRegistered, ""},
		{"not listed at all", nil, "new", stateAgentOnly, "does not list"},
		{"listed under the old node ID only", []*api.ServiceEntry{entry("old", passing)}, "new", stateAgentOnly, "refuse"},
		{"listed with a critical check", []*api.ServiceEntry{entry("new", api.HealthChecks{{Status: api.HealthCritical}})}, "new", stateFailing, "critical"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			state, err := catalogState(tt.entries, tt.nodeID)
			if state != tt.want || (tt.reason == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tt.reason) {
				t.Errorf("catalogState = %s, %v; want %s with a reason containing %q", state, err, tt.want, tt.reason)
			}
		})
	}
}
