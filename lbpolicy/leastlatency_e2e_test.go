package lbpolicy_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/caddymesh/caddymesh/internal/consultest"
)

// slow is how late the slow backend of a test answers: well beyond the
// delays of a loaded test machine running the race detector, which a fast
// backend's answer would otherwise show as a peak now and then.
const slow = 200 * time.Millisecond

// startNamedBackend starts a backend that answers its name with status,
// after a pause.
func startNamedBackend(t *testing.T, name string, status int, pause time.Duration) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		time.Sleep(pause)
		w.WriteHeader(status)
		io.WriteString(w, name)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// oneOddAmongFast starts four fast backends (fast-0 to fast-3) and odd,
// and returns their addresses.
func oneOddAmongFast(t *testing.T, odd *httptest.Server) []string {
	addrs := []string{odd.Listener.Addr().String()}
	for i := range 4 {
		addrs = append(addrs, startNamedBackend(t, fmt.Sprintf("fast-%d", i), http.StatusOK, 0).Listener.Addr().String())
	}
	return addrs
}

// answers sends n requests one after another and counts the answers by
// body.
func answers(url string, n int) map[string]int {
	counts := map[string]int{}
	for _, body := range strings.Fields(sequence(url, n)) {
		counts[body]++
	}
	return counts
}

// TestLeastLatencyMeasuresEveryTransport pins what the policy relies on:
// Caddy loads a configured transport before the selection policy, so the
// policy measures round trips through it, as through Caddy's default.
func TestLeastLatencyMeasuresEveryTransport(t *testing.T) {
	for name, transport := range map[string]string{
		"default_transport": "",
		"http_transport":    "transport http {\n\t\t\tkeepalive 30s\n\t\t}",
		"h2c_transport":     "transport http {\n\t\t\tversions h2c 1.1\n\t\t}",
	} {
		t.Run(name, func(t *testing.T) {
			addrs := oneOddAmongFast(t, startNamedBackend(t, "slow", http.StatusOK, slow))
			url := serve(t, fmt.Sprintf(`reverse_proxy %s {
		lb_policy least_latency
		%s
	}`, strings.Join(addrs, " "), transport))
			counts := answers(url, 300)
			// The slow backend may win draws until its first answer, and is
			// tried again only when its estimate has decayed below the
			// others' (a minute), or when a fast one's answer took longer.
			if counts["slow"] > 3 || counts["error"] > 0 {
				t.Errorf("300 requests went %v, want at most 3 to the slow backend and no error", counts)
			}
		})
	}
}

func TestLeastLatencyAvoidsFastFailures(t *testing.T) {
	for name, status := range map[string]int{"503": http.StatusServiceUnavailable, "429": http.StatusTooManyRequests, "500": http.StatusInternalServerError} {
		t.Run(name, func(t *testing.T) {
			addrs := oneOddAmongFast(t, startNamedBackend(t, "failing", status, 0))
			url := serve(t, fmt.Sprintf(`reverse_proxy %s {
		lb_policy least_latency
	}`, strings.Join(addrs, " ")))
			// sequence records a failed status as its body, "failing".
			if counts := answers(url, 300); counts["failing"] > 2 {
				t.Errorf("300 requests went %v, want at most 2 to the backend failing at once", counts)
			}
		})
	}
}

func TestLeastLatencySkipsWhatPassiveHealthRemoves(t *testing.T) {
	down := startNamedBackend(t, "down", http.StatusOK, 0)
	addrs := oneOddAmongFast(t, down)
	down.Close() // connections refused
	url := serve(t, fmt.Sprintf(`reverse_proxy %s {
		lb_policy least_latency
		fail_duration 1m
		lb_retries 1
	}`, strings.Join(addrs, " ")))
	counts := answers(url, 200)
	if answered := counts["fast-0"] + counts["fast-1"] + counts["fast-2"] + counts["fast-3"]; answered != 200 {
		t.Errorf("200 requests went %v, want all answered by the four others", counts)
	}
}

func TestLeastLatencyKeepsEstimatesAcrossReloads(t *testing.T) {
	addrs := oneOddAmongFast(t, startNamedBackend(t, "slow", http.StatusOK, slow))
	site := fmt.Sprintf(`reverse_proxy %s {
		lb_policy least_latency {
			decay 11s
		}
	}`, strings.Join(addrs, " "))
	answers(serve(t, site), 100)
	// Fresh estimates would start every backend at the default, 30 ms, and
	// the slow one would win draws until it first answered.
	if counts := answers(serve(t, site), 100); counts["slow"] != 0 {
		t.Errorf("after a reload 100 requests went %v, want none to the slow backend", counts)
	}
}

func TestLeastLatencyWithConsulWeights(t *testing.T) {
	// Equal backends, answering in 10 ms so that the machine's delays stay
	// small beside it: weight 3 divides a's cost by 3.
	for name, weight := range map[string]int{"a": 3, "b": 1} {
		backend := startNamedBackend(t, name, http.StatusOK, 10*time.Millisecond)
		agent.Register(t, consultest.Instance{Service: "latency", ID: "latency-" + name,
			Port: backend.Listener.Addr().(*net.TCPAddr).Port, Weights: &api.AgentWeights{Passing: weight, Warning: 1}})
	}
	url := serve(t, `reverse_proxy {
		dynamic consul latency
		lb_policy least_latency
	}`)
	counts := answers(url, 100)
	if counts["a"] < 70 || counts["a"]+counts["b"] != 100 {
		t.Errorf("100 requests went %v, want at least 70 to a (weight 3)", counts)
	}
}
