package loadgen

import (
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

// An open loop keeps sending on schedule while no answer comes back, and
// counts each request's latency from its scheduled time.
func TestOpenLoopKeepsSendingWhileTheServerStalls(t *testing.T) {
	release := make(chan struct{})
	var arrived atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		arrived.Add(1)
		<-release
		w.Write([]byte("ok"))
	}))
	defer srv.Close()

	run := Start(srv.Client(), 100, srv.URL)
	for arrived.Load() < 5 { // a closed loop of one would stop at 1
		time.Sleep(time.Millisecond)
	}
	close(release)
	result := run.Stop()
	if result.Failed != 0 || result.ByBody["ok"] != result.Sent || result.Sent < 5 {
		t.Fatalf("sent %d, failed %d, answers %v", result.Sent, result.Failed, result.ByBody)
	}
	// The first request waited for the fifth to be due, 40ms later.
	if slowest := result.Latencies[len(result.Latencies)-1]; slowest < 40*time.Millisecond {
		t.Errorf("slowest latency %s, want at least the 40ms the first request was held", slowest)
	}
}

func TestFailuresAreCountedAndDescribed(t *testing.T) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if n.Add(1)%2 == 0 {
			http.Error(w, "broken", http.StatusBadGateway)
			return
		}
		w.Write([]byte("ok"))
	}))
	defer srv.Close()
	run := Start(srv.Client(), 200, srv.URL+"/a", srv.URL+"/b")
	for n.Load() < 20 {
		time.Sleep(time.Millisecond)
	}
	result := run.Stop()
	if result.Failed != result.Sent-result.ByBody["ok"] || result.Failed == 0 || result.Unanswered != 0 {
		t.Fatalf("sent %d, failed %d (%d unanswered), answers %v", result.Sent, result.Failed, result.Unanswered, result.ByBody)
	}
	if len(result.Failures) != min(result.Failed, keptFailures) {
		t.Errorf("%d failures described, want %d", len(result.Failures), min(result.Failed, keptFailures))
	}
}

func TestUnansweredRequestsAreCounted(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close() // connection refused from now on
	run := Start(http.DefaultClient, 200, url)
	time.Sleep(50 * time.Millisecond)
	result := run.Stop()
	if result.Sent == 0 || result.Unanswered != result.Sent || result.Failed != result.Sent {
		t.Fatalf("sent %d, failed %d, unanswered %d", result.Sent, result.Failed, result.Unanswered)
	}
}

func TestPercentile(t *testing.T) {
	r := Result{Latencies: []time.Duration{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}}
	for q, want := range map[float64]time.Duration{0: 1, 0.5: 6, 0.99: 10, 1: 10} {
		if got := r.Percentile(q); got != want {
			t.Errorf("Percentile(%v) = %v, want %v", q, got, want)
		}
	}
	fine := Result{Latencies: []time.Duration{1234567, 23456789, 23456789}}
	if got, want := fine.Quantiles(), [3]time.Duration{23500 * time.Microsecond, 23500 * time.Microsecond, 23500 * time.Microsecond}; got != want {
		t.Errorf("Quantiles() = %v, want %v", got, want)
	}
	if got := (Result{Latencies: []time.Duration{1234567}}).Quantiles(); got[0] != 1230*time.Microsecond {
		t.Errorf("Quantiles()[0] = %v, want 1.23ms", got[0])
	}
	if (Result{}).Percentile(0.5) != 0 {
		t.Error("an empty run has a percentile")
	}
}
