package lbpolicy

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// estimates are the latency estimates of every upstream address that the
// least_latency policies of one configuration (decay and default_rtt) use,
// shared by those policies, as Caddy shares an upstream's passive health
// state, and kept across config reloads in estimateTables.
//
// Memory stays bounded: an estimate that has not been updated for idleFor
// carries no information any more (it decayed to nothing), and is dropped
// when new addresses come; an upstream still in use gets a fresh one.
type estimates struct {
	peakEWMA
	// byDial maps a dial address to its *tracked estimate; reads take no
	// lock.
	byDial sync.Map
	// idleFor is how long an estimate may go without an update before it
	// is dropped.
	idleFor time.Duration

	mu        sync.Mutex // held while adding and dropping estimates
	lastSweep time.Duration
}

// tracked is an estimate in a table.
type tracked struct {
	estimate
	// dropped is set when the table let go of the estimate: a pool that
	// holds it must look the address up again.
	dropped atomic.Bool
}

// estimateTables holds the tables of the configurations in use, by
// configuration; a reload takes the same table before the old config
// lets go of it.
var estimateTables = caddy.NewUsagePool()

// clock returns the time on the monotonic clock of every estimate.
func clock() time.Duration { return time.Since(epoch) }

var epoch = time.Now()

// takeEstimates returns the table of the configuration p, making it the
// first time. Release it with releaseEstimates(p).
func takeEstimates(p peakEWMA) (*estimates, error) {
	table, _, err := estimateTables.LoadOrNew(tableKey(p), func() (caddy.Destructor, error) {
		return &estimates{peakEWMA: p, idleFor: max(30*time.Duration(p.decay), time.Minute)}, nil
	})
	if err != nil {
		return nil, err
	}
	return table.(*estimates), nil
}

// releaseEstimates lets go of the table of configuration p.
func releaseEstimates(p peakEWMA) {
	_, _ = estimateTables.Delete(tableKey(p))
}

func tableKey(p peakEWMA) string {
	return fmt.Sprintf("decay=%v default_rtt=%v", time.Duration(p.decay), p.defaultRTT)
}

// Destruct implements caddy.Destructor; the table holds nothing to free.
func (*estimates) Destruct() error { return nil }

// lookup returns the estimate of the upstream at dial, making it when the
// address is new.
func (t *estimates) lookup(dial string) *tracked {
	if e, ok := t.byDial.Load(dial); ok {
		return e.(*tracked)
	}
	return t.add(dial)
}

// add makes the estimate of a new address, first dropping those idle for
// longer than idleFor if no sweep did in the last idleFor.
func (t *estimates) add(dial string) *tracked {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e, ok := t.byDial.Load(dial); ok { // added meanwhile
		return e.(*tracked)
	}
	now := clock()
	if now-t.lastSweep > t.idleFor {
		t.sweep(now)
	}
	e := new(tracked)
	t.start(&e.estimate, now)
	t.byDial.Store(dial, e)
	return e
}

// sweep drops the estimates not updated since before now-idleFor.
func (t *estimates) sweep(now time.Duration) {
	t.lastSweep = now
	t.byDial.Range(func(dial, e any) bool {
		if e := e.(*tracked); now-e.last.Load().at > t.idleFor {
			e.dropped.Store(true)
			t.byDial.Delete(dial)
		}
		return true
	})
}
