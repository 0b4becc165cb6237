package discovery

import (
	"context"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"
	"golang.org/x/time/rate"
)

// Tuning of the polling loop. They are constants, not options: they keep
// Consul safe from caddymesh whatever the config says.
const (
	// queryInterval and queryBurst rate-limit each poller's queries: a
	// quiet subject is answered at once, a churning one degrades into
	// polling ten times a second instead of hammering Consul's servers.
	queryInterval = 100 * time.Millisecond
	queryBurst    = 2

	// retryBase and retryMax bound the exponential backoff (with jitter)
	// after failed queries.
	retryBase = 50 * time.Millisecond
	retryMax  = 2 * time.Second

	// requestSlack is added to a blocking query's timeout beyond the wait
	// Consul may take (wait plus up to wait/16 of jitter).
	requestSlack = 2 * time.Second
)

// poller asks Consul one blocking question over and over, on a goroutine
// of its own: what a health watch and an intentions watch share. It
// rate-limits its queries, follows Consul's rules for blocking indexes,
// backs off with jitter while Consul fails, keeps what it last learned
// meanwhile, and logs and announces an outage once when it starts and once
// when it ends. Its owner says how to ask (query, wait) and what to do with
// an answer (apply, recovered).
type poller[T any] struct {
	subject    string // the service watched, for logs, metrics and events
	datacenter string
	token      string
	client     *api.Client
	http       *http.Client
	logger     func() *zap.Logger
	limiter    *rate.Limiter
	status     atomic.Pointer[watchStatus]

	query     func(ctx context.Context, q *api.QueryOptions) (T, *api.QueryMeta, error)
	wait      func() time.Duration // the next query's wait
	apply     func(T)
	recovered func() // answers resume after failures; optional

	changes // its owner signals each answer it publishes

	tried     chan struct{} // closed once the first query's outcome is recorded
	triedOnce sync.Once
	cancel    context.CancelFunc
	done      chan struct{}

	// the goroutine's own state
	index        uint64
	failures     int
	failingSince time.Time
}

// watchStatus is how a poller has fared with Consul lately.
type watchStatus struct {
	index        uint64    // Consul's index of the last answer
	syncedAt     time.Time // when Consul last answered
	err          string    // the last query's error, if it failed
	failingSince time.Time // when the current outage began; zero if none
}

// staleness is how old what a poller learned may be: nothing while a
// blocking query is in flight (Consul answers it at once on a change), the
// time since Consul last answered while queries fail.
func (s *watchStatus) staleness() time.Duration {
	if s.failingSince.IsZero() || s.syncedAt.IsZero() {
		return 0
	}
	return time.Since(s.syncedAt)
}

// newPoller returns a poller of subject in datacenter over conn, which its
// owner completes and starts.
func newPoller[T any](subject, datacenter string, conn connection) (*poller[T], error) {
	client, httpClient, err := conn.newClient()
	if err != nil {
		return nil, err
	}
	p := &poller[T]{
		subject:    subject,
		datacenter: datacenter,
		token:      conn.token,
		client:     client,
		http:       httpClient,
		logger:     func() *zap.Logger { return caddy.Log().Named("mesh.consul") },
		limiter:    rate.NewLimiter(rate.Every(queryInterval), queryBurst),
		recovered:  func() {},
		tried:      make(chan struct{}),
		done:       make(chan struct{}),
	}
	p.status.Store(&watchStatus{})
	return p, nil
}

// start runs the loop on a goroutine of its own.
func (p *poller[T]) start() {
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	go p.run(ctx)
}

// stop stops the loop and waits for its goroutine to end.
func (p *poller[T]) stop() {
	p.cancel()
	<-p.done
	p.http.CloseIdleConnections()
}

// log returns the logger for this poller. It is looked up on each use,
// which is rare, because a poller outlives the config whose logs were
// current when it started.
func (p *poller[T]) log() *zap.Logger {
	return p.logger().With(zap.String("service", p.subject), zap.String("datacenter", p.datacenter))
}

func (p *poller[T]) run(ctx context.Context) {
	defer close(p.done)
	for p.limiter.Wait(ctx) == nil {
		started := time.Now()
		answer, lastIndex, err := p.fetch(ctx)
		if ctx.Err() != nil {
			return
		}
		metrics.countQuery(p.subject, time.Since(started), err)
		if err != nil {
			p.failed(err)
			p.triedOnce.Do(func() { close(p.tried) })
			if !sleep(ctx, backoff(p.failures)) {
				return
			}
			continue
		}
		p.index = nextIndex(p.index, lastIndex)
		p.succeeded()
		p.apply(answer)
		p.triedOnce.Do(func() { close(p.tried) }) // after apply: the answer is current
	}
}

// fetch runs one blocking query from the current index.
func (p *poller[T]) fetch(ctx context.Context) (T, uint64, error) {
	wait := p.wait()
	ctx, cancel := context.WithTimeout(ctx, wait+wait/16+requestSlack)
	defer cancel()
	q := &api.QueryOptions{WaitIndex: p.index, WaitTime: wait, Token: p.token}
	answer, meta, err := p.query(ctx, q.WithContext(ctx))
	if err != nil {
		var zero T
		return zero, 0, err
	}
	return answer, meta.LastIndex, nil
}

// nextIndex follows Consul's rules for blocking indexes: start over when
// the index goes backwards, and never send an index below 1 after the
// first query.
func nextIndex(previous, returned uint64) uint64 {
	switch {
	case returned < previous:
		return 0
	case returned < 1:
		return 1
	default:
		return returned
	}
}

// failed records a failed query. What was learned stays current; the
// outage is logged and announced once, when it starts.
func (p *poller[T]) failed(err error) {
	p.failures++
	p.index = 0 // whoever answers next may be a restarted agent with other indexes
	if p.failures == 1 {
		p.failingSince = time.Now()
		p.log().Warn("consul query failed; serving what it last answered until it answers again", zap.Error(err))
		emit(eventConsulUnreachable, p.eventData(map[string]any{"error": err.Error()}))
	}
	status := *p.status.Load()
	status.err, status.failingSince = err.Error(), p.failingSince
	p.status.Store(&status)
}

// succeeded records an answer, and ends an outage if there was one.
func (p *poller[T]) succeeded() {
	if p.failures > 0 {
		outage := time.Since(p.failingSince)
		p.log().Info("consul answers again", zap.Int("failed_queries", p.failures), zap.Duration("outage", outage))
		emit(eventConsulRecovered, p.eventData(map[string]any{"outage": outage.String()}))
		p.failures = 0
		p.recovered()
	}
	p.status.Store(&watchStatus{index: p.index, syncedAt: time.Now()})
}

// eventData is data for an event about this poller's subject.
func (p *poller[T]) eventData(data map[string]any) map[string]any {
	data["service"] = p.subject
	data["datacenter"] = p.datacenter
	return data
}

// backoff is the pause after the n-th failure in a row: exponential from
// retryBase up to retryMax, with half of it random so that pollers that
// failed together do not retry together.
func backoff(failures int) time.Duration {
	d := min(retryBase<<min(failures-1, 16), retryMax)
	return d/2 + rand.N(d/2)
}

// sleep waits for d or until ctx is done, and reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// changes signals the subscribers of a poller each time its owner
// publishes a new answer.
type changes struct {
	mu   sync.Mutex
	subs map[chan<- struct{}]struct{}
}

// subscribe makes ch receive a signal after each change. The signal is
// dropped when ch is full: give it a buffer of one, and any number of
// changes before the subscriber looks make one signal.
func (c *changes) subscribe(ch chan<- struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.subs == nil {
		c.subs = make(map[chan<- struct{}]struct{})
	}
	c.subs[ch] = struct{}{}
}

// unsubscribe stops signals to ch.
func (c *changes) unsubscribe(ch chan<- struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.subs, ch)
}

// notify signals every subscriber, without waiting for any.
func (c *changes) notify() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for ch := range c.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}
