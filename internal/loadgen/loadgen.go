// Package loadgen sends HTTP GETs at a constant rate, open loop: each
// request leaves on schedule whether or not the earlier ones have been
// answered, and its latency counts from its scheduled time. A slow server
// shows in the latencies instead of slowing the load down, which a closed
// loop generator such as wrk hides (coordinated omission).
package loadgen

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"time"
)

// maxOutstanding bounds the requests in flight; a request due when that
// many are outstanding is not sent and counts as failed.
const maxOutstanding = 4096

// keptFailures is how many failures a Result describes.
const keptFailures = 5

// Result is what a run saw.
type Result struct {
	// Sent is the number of requests due during the run.
	Sent int
	// Failed counts the requests that got no 200, Unanswered included.
	Failed int
	// Unanswered counts the failed requests that got no HTTP answer at all
	// (connection refused, reset or closed).
	Unanswered int
	// Failures describe the first few failed requests.
	Failures []string
	// Latencies of the requests, sorted, from their scheduled time to the
	// end of their response body.
	Latencies []time.Duration
	// ByBody counts the 200 answers by body.
	ByBody map[string]int
	// Answers are the 200 answers in the order they came, each with the
	// time it was due, from the start of the run.
	Answers []Answer
}

// Answer is a 200 answer: its body, and when its request was due.
type Answer struct {
	// Due is when the request was due, from the start of the run.
	Due time.Duration
	// Body is the answer's body.
	Body string
}

// Percentile returns the latency below which a fraction q (0..1) of the
// requests fell, or 0 for a run with no request.
func (r Result) Percentile(q float64) time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	i := int(q * float64(len(r.Latencies)))
	return r.Latencies[min(i, len(r.Latencies)-1)]
}

// Quantiles returns the p50, p99 and p99.9 latencies, rounded for a table:
// to 0.1 ms above 10 ms, to 10 µs below.
func (r Result) Quantiles() [3]time.Duration {
	var out [3]time.Duration
	for i, q := range []float64{0.5, 0.99, 0.999} {
		d := r.Percentile(q)
		if d > 10*time.Millisecond {
			out[i] = d.Round(100 * time.Microsecond)
		} else {
			out[i] = d.Round(10 * time.Microsecond)
		}
	}
	return out
}

// Run is load being sent.
type Run struct {
	client *http.Client
	urls   []string
	stop   chan struct{}
	done   chan struct{}
	slots  chan struct{}
	flight sync.WaitGroup

	start time.Time

	mu     sync.Mutex
	result Result
}

// Start sends GETs with client at rate requests a second until Stop, to
// urls in turn.
func Start(client *http.Client, rate int, urls ...string) *Run {
	r := &Run{
		client: client, urls: urls,
		stop: make(chan struct{}), done: make(chan struct{}), slots: make(chan struct{}, maxOutstanding),
		result: Result{ByBody: make(map[string]int)}, start: time.Now(),
	}
	go r.schedule(time.Second / time.Duration(rate))
	return r
}

// schedule launches a request every interval, on a fixed timetable.
func (r *Run) schedule(interval time.Duration) {
	defer close(r.done)
	due := r.start
	for i := 0; ; i++ {
		select {
		case <-r.stop:
			return
		case <-time.After(time.Until(due)):
		}
		select {
		case r.slots <- struct{}{}:
			r.flight.Add(1)
			go r.send(r.urls[i%len(r.urls)], due)
		default:
			r.record(due, time.Now(), fmt.Errorf("not sent: %d requests outstanding", maxOutstanding), 0, "")
		}
		due = due.Add(interval)
	}
}

// send makes one request to url, scheduled at due.
func (r *Run) send(url string, due time.Time) {
	defer r.flight.Done()
	defer func() { <-r.slots }()
	resp, err := r.client.Get(url)
	if err != nil {
		r.record(due, time.Now(), err, 0, "")
		return
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 256))
	resp.Body.Close()
	r.record(due, time.Now(), err, resp.StatusCode, string(body))
}

func (r *Run) record(due, end time.Time, err error, status int, body string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.result.Sent++
	r.result.Latencies = append(r.result.Latencies, end.Sub(due))
	switch {
	case err != nil:
		r.result.Unanswered++
		r.fail(fmt.Sprintf("%s: %v", due.Format("15:04:05.000"), err))
	case status != http.StatusOK:
		r.fail(fmt.Sprintf("%s: status %d: %.80s", due.Format("15:04:05.000"), status, body))
	default:
		r.result.ByBody[body]++
		r.result.Answers = append(r.result.Answers, Answer{Due: due.Sub(r.start), Body: body})
	}
}

func (r *Run) fail(description string) {
	r.result.Failed++
	if len(r.result.Failures) < keptFailures {
		r.result.Failures = append(r.result.Failures, description)
	}
}

// Failed returns the number of failed requests so far.
func (r *Run) Failed() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.result.Failed
}

// Stop stops sending, waits for the requests in flight and returns what
// the run saw.
func (r *Run) Stop() Result {
	close(r.stop)
	<-r.done
	r.flight.Wait()
	r.mu.Lock()
	defer r.mu.Unlock()
	slices.Sort(r.result.Latencies)
	return r.result
}
