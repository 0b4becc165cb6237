package chaos_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"text/template"
	"time"

	"github.com/caddymesh/caddymesh/internal/consultest"
	"github.com/caddymesh/caddymesh/internal/loadgen"
	"github.com/caddymesh/caddymesh/internal/meshtest"
)

// datacenter is the Consul of the cluster scenarios (issue 19): servers,
// and a client agent that the backends register through and the front
// asks, as on an application's host, with a counter of the front's Consul
// requests in front of the client agent's HTTP API.
type datacenter struct {
	// cluster holds the servers; nil when they are one dev agent.
	cluster *consultest.Cluster
	// server is a server to ask about the catalog.
	server *consultest.Agent
	// client is the client agent.
	client *consultest.Agent
	// counter stands between the front and the client agent, and counts.
	counter *meshtest.ConsulProxy
}

// startDatacenter starts servers Consul servers (0: one dev agent) with
// extra configuration hcl, and a client agent joined to them; the test
// stops them at its end.
func startDatacenter(t *testing.T, servers int, hcl ...string) *datacenter {
	t.Helper()
	dc := &datacenter{}
	if servers == 0 {
		dc.server = startAgent(t)
	} else {
		cluster, err := consultest.StartCluster(consultest.ClusterOptions{Servers: servers, HCL: hcl})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cluster.Stop)
		dc.cluster, dc.server = cluster, cluster.Servers[0]
	}
	client, err := consultest.Start(consultest.Options{ClientOf: dc.server})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(client.Stop)
	dc.client = client
	dc.counter = meshtest.StartConsulProxy(t, client.Addr)
	return dc
}

// backends are running instances of service b, by ID.
type backends map[string]*meshtest.Backend

// startBackends starts a backend for each of ids and registers it through
// agent, passing.
func startBackends(t *testing.T, agent *consultest.Agent, ids ...string) backends {
	t.Helper()
	started := backends{}
	for _, id := range ids {
		started[id] = meshtest.StartBackend(t, id)
		agent.Register(t, consultest.Instance{Service: service, ID: id, Port: started[id].Port()})
	}
	return started
}

// hits is how many requests the backends ids answered so far.
func (b backends) hits(ids ...string) int64 {
	var n int64
	for _, id := range ids {
		n += b[id].Hits.Load()
	}
	return n
}

// consistencies are the consistency modes of `dynamic consul`; a modes
// front has a site for each.
var consistencies = []string{"default", "stale", "cached"}

var modesCaddyfile = template.Must(template.New("modes").Parse(`{
	admin {{.Admin}}
	persist_config off
	mesh {
		consul {
			address {{.Consul}}
		}
	}
}
{{range .Sites}}
:{{.Port}} {
	reverse_proxy {
		dynamic consul ` + service + ` {
			consistency {{.Mode}}
		}
		lb_policy smooth_weighted
		lb_retries 2
		fail_duration 10s
	}
}
{{end}}`))

// startModesFront starts one front Caddy with a site for each consistency
// mode, all proxying to service b as the README recommends, and returns a
// front per mode, in the order of consistencies.
func startModesFront(t *testing.T, consul string) []*front {
	t.Helper()
	type site struct {
		Port int
		Mode string
	}
	admin := fmt.Sprintf("localhost:%d", meshtest.FreePort())
	var sites []site
	for _, mode := range consistencies {
		sites = append(sites, site{meshtest.FreePort(), mode})
	}
	var out strings.Builder
	if err := modesCaddyfile.Execute(&out, map[string]any{"Admin": admin, "Consul": consul, "Sites": sites}); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(file, []byte(out.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	proc := meshtest.StartCaddy(t, file, admin)
	var fronts []*front
	for _, s := range sites {
		fronts = append(fronts, &front{url: fmt.Sprintf("http://127.0.0.1:%d", s.Port), admin: admin, proc: proc})
	}
	return fronts
}

// awaitAllRouted waits until every front spreads requests over exactly
// ids.
func awaitAllRouted(t *testing.T, fronts []*front, ids ...string) {
	t.Helper()
	for _, f := range fronts {
		awaitRouted(t, f, ids)
	}
}

// modesLoad is open-loop load through a modes front, the scenario's rate
// shared by its modes, with a count of the front's Consul requests.
type modesLoad struct {
	runs    []*loadgen.Run
	counter *meshtest.ConsulProxy
	before  int
}

func startModesLoad(t *testing.T, fronts []*front, counter *meshtest.ConsulProxy) *modesLoad {
	client := newClient(t)
	l := &modesLoad{counter: counter, before: counter.Requests("")}
	for _, f := range fronts {
		l.runs = append(l.runs, loadgen.Start(client, rate/len(fronts), f.url+"/"))
	}
	return l
}

// stop stops the load and records a row per mode, named scenario plus the
// mode, with notes and the front's Consul requests; it fails the test on
// any failed request.
func (l *modesLoad) stop(t *testing.T, scenario, notes string) {
	t.Helper()
	queries := l.counter.Requests("") - l.before
	for i, run := range l.runs {
		result := run.Stop()
		record(t, fmt.Sprintf("%s, `consistency %s`", scenario, consistencies[i]), result,
			fmt.Sprintf("%s; %d Consul requests from the front, its 3 modes together", notes, queries))
		expectNoFailure(t, result, scenario+" in consistency "+consistencies[i])
	}
}

// watchState is where a watch stands, from the front's /mesh/services.
type watchState struct {
	Consistency string
	Staleness   string
	KnownLeader *bool  `json:"known_leader"`
	LastError   string `json:"last_error"`
	ConsulIndex uint64 `json:"consul_index"`
	Healthy     int
}

// watchStates returns the front's watches, in the order of consistencies.
func (f *front) watchStates(t *testing.T) []watchState {
	t.Helper()
	var views []watchState
	if err := json.Unmarshal([]byte(f.adminRequest(t, "GET", "/mesh/services", "", "")), &views); err != nil {
		t.Fatal(err)
	}
	var ordered []watchState
	for _, mode := range consistencies {
		for _, v := range views {
			if v.Consistency == mode {
				ordered = append(ordered, v)
			}
		}
	}
	if len(ordered) != len(consistencies) {
		t.Fatalf("the front watches %+v, want one watch per consistency mode", views)
	}
	for _, v := range ordered {
		if v.KnownLeader == nil {
			t.Fatalf("/mesh/services shows no known_leader: %+v", v)
		}
	}
	return ordered
}

// staleness is the watch's staleness as a duration.
func (s watchState) staleness(t *testing.T) time.Duration {
	d, err := time.ParseDuration(s.Staleness)
	if err != nil {
		t.Fatalf("staleness %q: %v", s.Staleness, err)
	}
	return d
}

// awaitWatches waits until every watch of the modes front satisfies cond,
// and returns how long that took.
func awaitWatches(t *testing.T, f *front, timeout time.Duration, what string, cond func(watchState) bool) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		states := f.watchStates(t)
		if !slices.ContainsFunc(states, func(s watchState) bool { return !cond(s) }) {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("not within %s: %s; the watches: %+v", timeout, what, states)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// awaitAllRoutedWithin waits up to timeout until every front spreads
// requests over exactly ids.
func awaitAllRoutedWithin(t *testing.T, fronts []*front, timeout time.Duration, ids ...string) {
	t.Helper()
	want := strings.Join(ids, ",")
	for _, f := range fronts {
		meshtest.EventuallyEquals(t, timeout, f.url+" routes to "+want, want, func() string { return f.reached(10 * len(ids)) })
	}
}

// round rounds d for a row of the table.
func round(d time.Duration) time.Duration { return d.Round(10 * time.Millisecond) }
