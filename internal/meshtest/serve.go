package meshtest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddymesh/caddymesh/internal/consultest"
)

// MainWithConsul is the TestMain of a package whose tests need Consul: it
// runs Caddy instead when the test binary is asked to (RunCaddyIfAsked),
// else starts a real Consul dev agent into *agent, runs the tests and
// stops the agent.
func MainWithConsul(m *testing.M, agent **consultest.Agent) {
	RunCaddyIfAsked()
	consultest.Main(m, agent)
}

// Serve loads a Caddyfile config whose mesh app points at the Consul at
// consulAddr, with one site on a free port whose body is site; it returns
// the site's URL.
func Serve(t testing.TB, consulAddr, site string) string {
	t.Helper()
	port := FreePort()
	Load(t, fmt.Sprintf(`{
	%s
	mesh {
		consul {
			address %s
		}
	}
}
:%d {
%s
}`, Globals(), consulAddr, port, site), "caddyfile")
	return fmt.Sprintf("http://127.0.0.1:%d/", port)
}

// Propagation bounds how long a change in Consul may take to reach
// traffic in an end-to-end test: generous for what takes milliseconds.
const Propagation = 5 * time.Second

// Backends starts named backends and registers each in agent as an
// instance of service, with the given check status (passing when absent).
func Backends(t *testing.T, agent *consultest.Agent, service string, statuses map[string]string, names ...string) map[string]*Backend {
	out := make(map[string]*Backend)
	for _, name := range names {
		b := StartBackend(t, name)
		agent.Register(t, consultest.Instance{Service: service, ID: service + "-" + name, Port: b.Port(), Status: statuses[name]})
		out[name] = b
	}
	return out
}

// Reached returns the backends that answered n requests to url, sorted
// and joined by commas.
func Reached(url string, n int) string {
	var names []string
	for name := range Spread(url, n) {
		names = append(names, name)
	}
	slices.Sort(names)
	return strings.Join(names, ",")
}

// AwaitReached waits until 40 requests to url reach exactly the backends
// want (as Reached spells them).
func AwaitReached(t *testing.T, url, want string) {
	t.Helper()
	EventuallyEquals(t, Propagation, "traffic reaches exactly "+want, want, func() string { return Reached(url, 40) })
}

// AdminGet fetches an endpoint of Caddy's admin API, decoding its JSON
// into out (unless nil); it returns the status and the raw JSON.
func AdminGet(t *testing.T, method, path string, out any) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, AdminURL()+path, nil)
	req.Close = true // Caddy restarts its admin server on each config change: no keep-alive
	resp, err := Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var raw json.RawMessage
	if err := json.NewDecoder(resp.Body).Decode(&raw); err != nil {
		t.Fatalf("%s %s: not JSON: %v", method, path, err)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatal(err)
		}
	}
	return resp.StatusCode, string(raw)
}

// SettledGoroutines returns the number of goroutines once it stops
// falling (for at most five seconds): what a leak check compares.
func SettledGoroutines() int {
	n := runtime.NumGoroutine()
	for range 50 {
		time.Sleep(100 * time.Millisecond)
		m := runtime.NumGoroutine()
		if m >= n {
			return m
		}
		n = m
	}
	return n
}
