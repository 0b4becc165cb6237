// Package meshtest is what caddymesh's end-to-end tests share: Caddy run
// in-process by caddytest on an admin port private to the test process,
// real HTTP backends on loopback, a steady load generator, and goroutine
// accounting.
package meshtest

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
)

// AdminPort is the in-process Caddy's admin port. It is free when the
// process starts, so that test packages running side by side, each with a
// Caddy of its own, never load configs into each other's Caddy.
var AdminPort = FreePort()

func init() {
	caddytest.Default.AdminPort = AdminPort
	caddytest.Default.LoadRequestTimeout = 30 * time.Second
}

// Globals are the global options every test Caddyfile needs: the private
// admin port, and no config autosave shared between test processes.
func Globals() string {
	return fmt.Sprintf("admin localhost:%d\n\tpersist_config off", AdminPort)
}

// AdminJSON is the "admin" member every test JSON config needs, for the same
// reasons as Globals.
func AdminJSON() string {
	return fmt.Sprintf(`"admin": {"listen": "localhost:%d", "config": {"persist": false}}`, AdminPort)
}

// AdminURL is the base URL of the in-process Caddy's admin API.
func AdminURL() string { return fmt.Sprintf("http://localhost:%d", AdminPort) }

// Load loads a config of the given type ("caddyfile" or "json") into the
// in-process Caddy, starting it the first time.
func Load(t testing.TB, config, configType string) *caddytest.Tester {
	t.Helper()
	tester := caddytest.NewTester(t)
	tester.InitServer(config, configType)
	if t.Failed() {
		t.FailNow()
	}
	return tester
}

// LoadError loads a config that should fail and returns Caddy's error
// message; the test fails if the config loads.
func LoadError(t testing.TB, config, configType string) string {
	t.Helper()
	if _, err := Client.Get(AdminURL() + "/config/"); err != nil {
		Load(t, "{\n\t"+Globals()+"\n}\n", "caddyfile") // starts the in-process Caddy
	}
	contentType := "application/json"
	if configType != "json" {
		contentType = "text/" + configType
	}
	resp, err := Client.Post(AdminURL()+"/load", contentType, strings.NewReader(config))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var answer struct{ Error string }
	if err := json.NewDecoder(resp.Body).Decode(&answer); err != nil || resp.StatusCode == http.StatusOK {
		t.Fatalf("config loaded (status %d), want an error", resp.StatusCode)
	}
	return answer.Error
}

// handedOut holds the ports FreePort has returned in this process.
var handedOut sync.Map

// FreePort returns a TCP port free on loopback right now, and never one it
// returned before in this process: two ports asked for one config (two
// sites, say) are never the same.
func FreePort() int {
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			panic(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if _, taken := handedOut.LoadOrStore(port, struct{}{}); !taken {
			return port
		}
	}
}

// Backend is a real HTTP server on loopback that answers every request
// with its name.
type Backend struct {
	// Name is what it answers.
	Name string
	// Hits counts the requests it answered.
	Hits atomic.Int64
	srv  *httptest.Server
}

// StartBackend starts a backend; the test closes it at its end.
func StartBackend(t testing.TB, name string) *Backend {
	b := &Backend{Name: name}
	b.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		b.Hits.Add(1)
		io.WriteString(w, name)
	}))
	t.Cleanup(b.Close)
	return b
}

// Addr is the backend's host:port.
func (b *Backend) Addr() string { return b.srv.Listener.Addr().String() }

// Port is the backend's port.
func (b *Backend) Port() int { return b.srv.Listener.Addr().(*net.TCPAddr).Port }

// Close stops the backend.
func (b *Backend) Close() { b.srv.Close() }

// Client is an HTTP client for test traffic, with keep-alive.
var Client = &http.Client{
	Timeout:   10 * time.Second,
	Transport: &http.Transport{MaxIdleConnsPerHost: 64},
}

// Get sends one GET with Client and returns the status and body; on an
// error, status 0 and the error.
func Get(url string) (int, string) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, err.Error()
	}
	return Do(Client, req)
}

// GetAfterReload is Get just after a config reload: a request whose
// connection is dropped before any answer is sent once more, as stock
// Caddy drops about one in a hundred reloads (see StopAcrossReloads).
func GetAfterReload(url string) (int, string) {
	status, body := Get(url)
	if status == 0 {
		status, body = Get(url)
	}
	return status, body
}

// Do sends req with client and returns the status and body; on a
// transport error, status 0 and the error.
func Do(client *http.Client, req *http.Request) (int, string) {
	resp, err := client.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// Spread sends n requests to url one after another and counts the answers:
// by body for 200s, as "status N" otherwise.
func Spread(url string, n int) map[string]int {
	counts := make(map[string]int)
	for range n {
		status, body := Get(url)
		if status != http.StatusOK {
			body = "status " + strconv.Itoa(status)
		}
		counts[body]++
	}
	return counts
}

// Eventually calls cond until it holds, failing the test after timeout.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	await(t, timeout, what, cond, func() string { return "" })
}

// EventuallyEquals calls got until it returns want, failing the test
// after timeout with the last answer it had.
func EventuallyEquals(t testing.TB, timeout time.Duration, what, want string, got func() string) {
	t.Helper()
	var last string
	await(t, timeout, what, func() bool { last = got(); return last == want },
		func() string { return fmt.Sprintf(": got %q, want %q", last, want) })
}

// await calls cond until it holds; after timeout it fails the test,
// saying what it waited for and, from detail, what it saw last.
func await(t testing.TB, timeout time.Duration, what string, cond func() bool, detail func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting until %s%s", timeout, what, detail())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Traffic is steady load against one URL from a few workers.
type Traffic struct {
	ok, failed, dropped atomic.Int64
	mu                  sync.Mutex
	firstError          string
	stop                chan struct{}
	wg                  sync.WaitGroup
}

// StartTraffic starts workers sending requests to url back to back.
func StartTraffic(url string, workers int) *Traffic {
	tr := &Traffic{stop: make(chan struct{})}
	for range workers {
		tr.wg.Add(1)
		go tr.work(url)
	}
	return tr
}

func (tr *Traffic) work(url string) {
	defer tr.wg.Done()
	for {
		select {
		case <-tr.stop:
			return
		default:
		}
		resp, err := Client.Get(url)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				tr.ok.Add(1)
				continue
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
			tr.dropped.Add(1) // closed or reset before any answer
		} else {
			tr.failed.Add(1)
		}
		tr.mu.Lock()
		if tr.firstError == "" {
			tr.firstError = err.Error()
		}
		tr.mu.Unlock()
	}
}

// Stop stops the workers and fails the test unless every request
// succeeded.
func (tr *Traffic) Stop(t testing.TB, during string) {
	t.Helper()
	tr.report(t, during, 0)
}

// StopAcrossReloads stops the workers and fails the test unless every
// request succeeded, but for a few connections dropped before any answer:
// stock Caddy drops about one in a hundred reloads under load while it
// hands its listeners over to the new config, whatever the handlers (see
// TestLiveRouteManagement's static route). reloads is how many there were.
func (tr *Traffic) StopAcrossReloads(t testing.TB, during string, reloads int) {
	t.Helper()
	tr.report(t, during, int64(max(3, reloads/20)))
}

func (tr *Traffic) report(t testing.TB, during string, droppedAllowed int64) {
	t.Helper()
	close(tr.stop)
	tr.wg.Wait()
	ok, failed, dropped := tr.ok.Load(), tr.failed.Load(), tr.dropped.Load()
	total := ok + failed + dropped
	t.Logf("%d requests %s; %d connections dropped before an answer", total, during, dropped)
	if dropped > droppedAllowed {
		failed += dropped
	}
	if failed > 0 {
		t.Errorf("%d of %d requests failed %s; first: %s", failed, total, during, tr.firstError)
	}
}

// Goroutines counts the goroutines whose stack mentions fn, a function
// name such as "consul.(*Poller[...]).run".
func Goroutines(fn string) int {
	count := 0
	for _, stack := range stacks() {
		if strings.Contains(stack, fn) {
			count++
		}
	}
	return count
}

// GoroutineSummary lists the running goroutines by where they were
// created, most numerous first: what a leak report needs.
func GoroutineSummary() string {
	counts := make(map[string]int)
	for _, stack := range stacks() {
		creator := "(no creator)"
		if _, after, ok := strings.Cut(stack, "\ncreated by "); ok {
			creator, _, _ = strings.Cut(after, "\n")
		}
		counts[creator]++
	}
	lines := make([]string, 0, len(counts))
	for creator, n := range counts {
		lines = append(lines, fmt.Sprintf("%5d %s", n, creator))
	}
	slices.Sort(lines)
	slices.Reverse(lines)
	return strings.Join(lines, "\n")
}

// stacks returns the stack of every goroutine.
func stacks() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Split(string(buf[:n]), "\n\n")
		}
		buf = make([]byte, 2*len(buf))
	}
}
