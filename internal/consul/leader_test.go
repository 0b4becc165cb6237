package consul

import (
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddymesh/caddymesh/internal/meshtest"
)

func TestLeaderChecksComeSoonerWhileNoLeaderIsFound(t *testing.T) {
	if found, lost := nextLeaderCheck(true), nextLeaderCheck(false); lost <= leaderNudgeSpacing || lost >= found || found != leaderCheckInterval {
		t.Errorf("next check after a leader was found: %s, after none was: %s; want the interval, then a shorter one, longer than the spacing", found, lost)
	}
}

// A watch's failed query nudges its connection's leader check: the next
// check goes at once (past the spacing), not at the 10s interval.
func TestLeaderCheckNudgedChecksAgain(t *testing.T) {
	var checks atomic.Int32
	consul := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/status/leader" {
			checks.Add(1)
		}
		w.Write([]byte(`"127.0.0.1:8300"`))
	}))
	defer consul.Close()
	conn, err := Resolve(&Config{Address: consul.Listener.Addr().String()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	l, key, err := takeLeaderCheck(conn, "")
	if err != nil {
		t.Fatal(err)
	}
	defer leaderChecks.Release(key)
	meshtest.Eventually(t, 5*time.Second, "the first check", func() bool { return checks.Load() == 1 })
	l.Nudge()
	l.Nudge() // absorbed: one check wanted already
	// Half the interval: without the nudge the second check waits all of it.
	meshtest.Eventually(t, leaderCheckInterval/2, "one check for both nudges", func() bool { return l.state.Load().Known && checks.Load() == 2 })
}
