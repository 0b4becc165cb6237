package middleware

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func settings() *circuitSettings {
	return &circuitSettings{
		failureRatio: 0.5, minRequests: 10, window: 10 * time.Second,
		openFor: 30 * time.Second, halfOpenRequests: 3,
	}
}

// run records n outcomes, failing every k-th (k 0: none, 1: all).
func run(c *circuit, s *circuitSettings, now time.Time, n, k int) transition {
	last := stayed
	for i := range n {
		if ok, _ := c.admit(now, s); !ok {
			continue
		}
		if change := c.record(k > 0 && i%k == 0, now, s); change != stayed {
			last = change
		}
	}
	return last
}

func TestCircuitOpensOnFailureRatioOverMinRequests(t *testing.T) {
	s := settings()
	now := time.Now()
	c := new(circuit)
	if change := run(c, s, now, 9, 1); change != stayed {
		t.Fatal("opened before min_requests were seen")
	}
	if change := run(c, s, now, 1, 1); change != opened {
		t.Fatal("did not open at 10 failures of 10")
	}
	c = new(circuit)
	if change := run(c, s, now, 20, 3); change != stayed { // a third fail
		t.Error("opened at a third failing, under the 0.5 ratio")
	}
	c = new(circuit)
	if change := run(c, s, now, 20, 2); change != opened { // half fail
		t.Error("did not open at half failing")
	}
}

func TestCircuitForgetsFailuresOutsideTheWindow(t *testing.T) {
	s := settings()
	start := time.Now()
	c := new(circuit)
	run(c, s, start, 8, 1)
	if change := run(c, s, start.Add(11*time.Second), 4, 1); change != stayed {
		t.Error("failures older than the window still counted")
	}
}

func TestCircuitOpensOnConsecutiveFailures(t *testing.T) {
	s := settings()
	s.consecutiveFailures = 3
	now := time.Now()
	c := new(circuit)
	c.record(true, now, s)
	c.record(true, now, s)
	c.record(false, now, s) // resets the run
	c.record(true, now, s)
	c.record(true, now, s)
	if change := c.record(true, now, s); change != opened {
		t.Error("did not open at three failures in a row")
	}
}

func TestOpenCircuitRefusesThenProbes(t *testing.T) {
	s := settings()
	start := time.Now()
	c := new(circuit)
	run(c, s, start, 10, 1)
	ok, wait := c.admit(start.Add(10*time.Second), s)
	if ok || wait != 20*time.Second {
		t.Fatalf("open circuit: admitted %v, wait %s; want refused for the 20s left", ok, wait)
	}
	half := start.Add(31 * time.Second)
	admitted := 0
	for range 10 {
		if ok, _ := c.admit(half, s); ok {
			admitted++
		}
	}
	if admitted != 3 {
		t.Fatalf("half-open circuit admitted %d probes, want 3", admitted)
	}
	c.record(false, half, s)
	c.record(false, half, s)
	if change := c.record(false, half, s); change != reclosed {
		t.Fatal("three passing probes did not close the circuit")
	}
	if ok, _ := c.admit(half, s); !ok {
		t.Error("closed circuit refuses")
	}
}

func TestAFailingProbeOpensTheCircuitAgain(t *testing.T) {
	s := settings()
	start := time.Now()
	c := new(circuit)
	run(c, s, start, 10, 1)
	half := start.Add(31 * time.Second)
	c.admit(half, s)
	if change := c.record(true, half, s); change != opened {
		t.Fatal("a failing probe did not open the circuit")
	}
	if ok, _ := c.admit(half.Add(time.Second), s); ok {
		t.Error("the circuit admitted a request right after reopening")
	}
	if ok, _ := c.admit(half.Add(31*time.Second), s); !ok {
		t.Error("the reopened circuit did not half-open after open_for")
	}
}

// TestCircuitUnderConcurrency drives a circuit from many goroutines on a
// shared simulated clock, through phases of failure and health, until it
// has cycled a few times: the state machine must neither wedge nor close a
// circuit that is not open. (A probe held by a descheduled goroutine keeps
// the circuit half-open while the others race the clock on: the loop runs
// until enough cycles, bounded only as a guard against a wedge.)
func TestCircuitUnderConcurrency(t *testing.T) {
	s := settings()
	s.openFor = time.Millisecond
	c := new(circuit)
	var clock atomic.Int64 // a microsecond per request
	var opens, closes atomic.Int32
	const cycles = 10
	deadline := time.Now().Add(time.Minute)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for closes.Load() < cycles && time.Now().Before(deadline) {
				now := time.Unix(0, clock.Add(int64(time.Microsecond)))
				if ok, _ := c.admit(now, s); !ok {
					continue
				}
				// The upstream fails for 4ms, then is healthy for 4ms.
				failing := (now.UnixNano()/int64(4*time.Millisecond))%2 == 0
				switch c.record(failing, now, s) {
				case opened:
					opens.Add(1)
				case reclosed:
					closes.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if closes.Load() < cycles {
		t.Fatalf("%d opens and %d closes in a minute: the circuit wedged", opens.Load(), closes.Load())
	}
	if closes.Load() > opens.Load() { // failing probes reopen: opens may outnumber closes
		t.Errorf("%d opens and %d closes: every close must follow an open", opens.Load(), closes.Load())
	}
}
