package chaos_test

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"text/template"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/caddymesh/caddymesh/internal/consultest"
	"github.com/caddymesh/caddymesh/internal/loadgen"
	"github.com/caddymesh/caddymesh/internal/meshtest"
)

// full selects the long form of every scenario, the one RESILIENCE.md
// reports; without it each scenario runs a shorter version of itself.
var full = flag.Bool("chaos.full", false, "run the long form of each scenario (RESILIENCE.md)")

// sized returns short in the short form and long in the long form.
func sized[T any](short, long T) T {
	if *full {
		return long
	}
	return short
}

// rate is the steady load of every scenario, in requests a second.
const rate = 200

// propagationGoal is how soon a change in Consul must reach routing.
const propagationGoal = 50 * time.Millisecond

// service is the name the backends register under.
const service = "b"

// startAgent starts a Consul dev agent that the test stops at its end.
func startAgent(t *testing.T) *consultest.Agent {
	t.Helper()
	agent, err := consultest.Start(consultest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(agent.Stop)
	return agent
}

// newClient returns the client of a scenario's load: keep-alive, enough
// idle connections for the open-loop generator's bursts.
func newClient(t *testing.T) *http.Client {
	transport := &http.Transport{MaxIdleConnsPerHost: 256}
	t.Cleanup(transport.CloseIdleConnections)
	return &http.Client{Timeout: 10 * time.Second, Transport: transport}
}

// sidecar is one instance of service b: an app behind a caddymesh sidecar
// (examples/sidecars/b.Caddyfile) that registers it in Consul and drains
// before it stops.
type sidecar struct {
	id    string
	admin string
	env   []string
	proc  *meshtest.CaddyProcess
}

// startSidecar starts instance id of service b, registered with the agent
// at consul (host:port), with a drain of drain.
func startSidecar(t *testing.T, consul, id string, drain time.Duration) *sidecar {
	t.Helper()
	app := meshtest.StartBackend(t, id)
	s := &sidecar{id: id, admin: fmt.Sprintf("localhost:%d", meshtest.FreePort())}
	s.env = []string{"PORT=" + strconv.Itoa(meshtest.FreePort()), "APP=" + app.Addr(), "INSTANCE=" + id,
		"ADMIN=" + s.admin, "DRAIN=" + drain.String(), "CONSUL_HTTP_ADDR=" + consul}
	s.start(t)
	return s
}

// start starts the sidecar's Caddy, on the same ports as before.
func (s *sidecar) start(t *testing.T) {
	t.Helper()
	s.proc = meshtest.StartCaddy(t, "../../examples/sidecars/b.Caddyfile", s.admin, s.env...)
}

// awaitPassing waits until Consul lists exactly the instances ids of
// service b as passing.
func awaitPassing(t *testing.T, agent *consultest.Agent, ids ...string) {
	t.Helper()
	slices.Sort(ids)
	want := strings.Join(ids, ",")
	meshtest.EventuallyEquals(t, 20*time.Second, "Consul lists "+want+" as passing", want, func() string {
		return agent.PassingIDs(service)
	})
}

// front is the Caddy that the load goes through.
type front struct {
	url   string
	admin string
	proc  *meshtest.CaddyProcess
}

// proxyConfig is the front's config for service b: `dynamic consul` and
// smooth_weighted, or stock Caddy's static upstreams and round_robin, with
// retries and passive health as set.
type proxyConfig struct {
	// Consul is the address of the Consul agent, or of a proxy in front of it.
	Consul string
	// Static, when set, makes the front stock Caddy, proxying to these
	// upstreams (host:port) with no Consul.
	Static []string
	// Retries and FailDuration are lb_retries and fail_duration; the README
	// recommends 2 and 10s.
	Retries      int
	FailDuration string
	// Keepalive, when set, is how long Caddy keeps an idle connection to
	// an upstream (2m by default).
	Keepalive string
	// Generation tells configs apart, so that each reload is a real one.
	Generation int
	// HoldLast, when set, is the source's hold_last.
	HoldLast string
}

// readme is the front's config with the retries the README documents.
func readme(consul string) proxyConfig {
	return proxyConfig{Consul: consul, Retries: 2, FailDuration: "10s"}
}

var frontCaddyfile = template.Must(template.New("front").Funcs(template.FuncMap{"join": strings.Join}).Parse(`{
	admin {{.Admin}}
	persist_config off
{{- if not .Static}}
	mesh {
		consul {
			address {{.Consul}}
		}
	}
{{- end}}
}

:{{.Port}} {
	header X-Generation {{.Generation}}
	reverse_proxy {
{{- if .Static}}
		to {{join .Static " "}}
		lb_policy round_robin
{{- else}}
		dynamic consul ` + service + `
{{- with .HoldLast}} {
			hold_last {{.}}
		}
{{- end}}
		lb_policy smooth_weighted
{{- end}}
		lb_retries {{.Retries}}
{{- with .FailDuration}}
		fail_duration {{.}}
{{- end}}
{{- with .Keepalive}}
		transport http {
			keepalive {{.}}
		}
{{- end}}
	}
}
`))

// caddyfile is the front's Caddyfile, listening on port with admin at admin.
func (c proxyConfig) caddyfile(port int, admin string) string {
	var out strings.Builder
	err := frontCaddyfile.Execute(&out, struct {
		proxyConfig
		Port  int
		Admin string
	}{c, port, admin})
	if err != nil {
		panic(err) // the template is a constant
	}
	return out.String()
}

// startFront starts a front Caddy process whose Caddyfile is
// caddyfile(port, admin), and waits until it answers 200 on /.
func startFront(t *testing.T, caddyfile func(port int, admin string) string, path string) *front {
	t.Helper()
	port := meshtest.FreePort()
	f := &front{url: fmt.Sprintf("http://127.0.0.1:%d", port), admin: fmt.Sprintf("localhost:%d", meshtest.FreePort())}
	file := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(file, []byte(caddyfile(port, f.admin)), 0o644); err != nil {
		t.Fatal(err)
	}
	f.proc = meshtest.StartCaddy(t, file, f.admin)
	meshtest.Eventually(t, 10*time.Second, "the front answers 200", func() bool {
		status, _ := meshtest.Get(f.url + path)
		return status == http.StatusOK
	})
	return f
}

// reached sends n requests through the front and returns the instances
// that answered, sorted and joined with commas.
func (f *front) reached(n int) string {
	var seen []string
	for name := range meshtest.Spread(f.url+"/", n) {
		seen = append(seen, name)
	}
	slices.Sort(seen)
	return strings.Join(seen, ",")
}

// adminRequest sends a request to the front's admin API and returns the
// body, failing the test on anything but a 200.
func (f *front) adminRequest(t *testing.T, method, path, contentType, body string) string {
	t.Helper()
	var status int
	var answer string
	// A connection can reach the admin server a config change is replacing
	// (both listen on the port for a moment) and be reset as it closes: such
	// a request is sent again, which is why this helper is for idempotent
	// requests only (GETs, and loads: Caddy leaves an unchanged config alone).
	for attempt := 0; attempt < 3 && status == 0; attempt++ {
		if attempt > 0 {
			time.Sleep(100 * time.Millisecond)
		}
		req, err := http.NewRequest(method, "http://"+f.admin+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", contentType)
		req.Close = true // Caddy restarts its admin server on each config change: no keep-alive
		status, answer = meshtest.Do(meshtest.Client, req)
	}
	if status != http.StatusOK {
		t.Fatalf("%s %s: %d %s", method, path, status, answer)
	}
	return answer
}

// reload loads caddyfile into the front through the admin API.
func (f *front) reload(t *testing.T, caddyfile string) {
	t.Helper()
	f.adminRequest(t, http.MethodPost, "/load", "text/caddyfile", caddyfile)
}

// goroutines returns the front's number of goroutines.
func (f *front) goroutines(t *testing.T) int {
	t.Helper()
	profile := f.adminRequest(t, http.MethodGet, "/debug/pprof/goroutine?debug=1", "", "")
	first, _, _ := strings.Cut(profile, "\n")
	n, err := strconv.Atoi(strings.TrimPrefix(first, "goroutine profile: total "))
	if err != nil {
		t.Fatalf("goroutine profile starts %q", first)
	}
	return n
}

// heapAfterGC returns the front's live heap in bytes, right after a
// garbage collection.
func (f *front) heapAfterGC(t *testing.T) int64 {
	t.Helper()
	profile := f.adminRequest(t, http.MethodGet, "/debug/pprof/heap?gc=1&debug=1", "", "")
	scanner := bufio.NewScanner(strings.NewReader(profile))
	scanner.Buffer(nil, 1<<20)
	for scanner.Scan() {
		if value, ok := strings.CutPrefix(scanner.Text(), "# HeapAlloc = "); ok {
			n, err := strconv.ParseInt(value, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no HeapAlloc in the heap profile")
	return 0
}

// watches returns the services the front watches in Consul, from the
// admin API.
func (f *front) watches(t *testing.T) []string {
	t.Helper()
	var views []struct{ Service string }
	if err := json.Unmarshal([]byte(f.adminRequest(t, http.MethodGet, "/mesh/services", "", "")), &views); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, v := range views {
		names = append(names, v.Service)
	}
	return names
}

// result is one row of the summary table.
type result struct {
	scenario string
	load     loadgen.Result
	notes    string
}

var (
	resultsMu sync.Mutex
	results   []result
)

// record logs a scenario's outcome and keeps it for the summary table.
func record(t *testing.T, scenario string, load loadgen.Result, notes string) {
	t.Helper()
	t.Logf("%s: %d requests, %d failed %v; %s", scenario, load.Sent, load.Failed, load.Failures, notes)
	resultsMu.Lock()
	defer resultsMu.Unlock()
	results = append(results, result{scenario, load, notes})
}

// printSummary writes the summary table in Markdown.
func printSummary(w io.Writer) {
	if len(results) == 0 {
		return
	}
	fmt.Fprintf(w, "\n%s form, %d requests/s open loop\n\n", sized("short", "long"), rate)
	fmt.Fprintln(w, "| scenario | requests | failed | p50 | p99 | p99.9 | measured |")
	fmt.Fprintln(w, "|----------|---------:|-------:|----:|----:|------:|----------|")
	for _, r := range results {
		q := r.load.Quantiles()
		fmt.Fprintf(w, "| %s | %d | %d | %s | %s | %s | %s |\n", r.scenario, r.load.Sent, r.load.Failed, q[0], q[1], q[2], r.notes)
	}
}

// registerCatalog registers instances of services straight into Consul's
// catalog, in transactions, each instance on one of a few external nodes.
func registerCatalog(t *testing.T, client *api.Client, instances []api.AgentService) {
	t.Helper()
	const opsPerTxn = 64
	const instancesPerNode = 100
	var ops api.TxnOps
	flush := func() {
		if len(ops) == 0 {
			return
		}
		ok, answer, _, err := client.Txn().Txn(ops, nil)
		if err != nil || !ok {
			t.Fatalf("registering instances: %v %v", err, answer.Errors)
		}
		ops = ops[:0]
	}
	for i, inst := range instances {
		node := fmt.Sprintf("node-%d", i/instancesPerNode)
		if i%instancesPerNode == 0 {
			ops = append(ops, &api.TxnOp{Node: &api.NodeTxnOp{Verb: api.NodeSet, Node: api.Node{Node: node, Address: "127.0.0.1"}}})
		}
		ops = append(ops, &api.TxnOp{Service: &api.ServiceTxnOp{Verb: api.ServiceSet, Node: node, Service: inst}})
		if len(ops) >= opsPerTxn {
			flush()
		}
	}
	flush()
}
