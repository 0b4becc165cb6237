package consul

import (
	"cmp"
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"
)

// requestSlack is added to a blocking query's timeout beyond the wait
// Consul may take (wait plus up to wait/16 of jitter).
const requestSlack = 2 * time.Second

// QueryTimeout bounds a blocking query of the given wait: Consul may take
// the wait plus up to wait/16 of jitter, and requestSlack more is allowed.
func QueryTimeout(wait time.Duration) time.Duration { return wait + wait/16 + requestSlack }

// DistrustAfterOutage is how long after an outage Consul's answers are
// checked against what was served before it: an answer older than that
// (a server still replaying its log), or one with no healthy instance where
// there were some (an agent whose services have not registered again), is
// not believed until Consul catches up or this time has passed.
const DistrustAfterOutage = 30 * time.Second

// Querier is what a Poller's owner says: how to ask Consul one question,
// how long a blocking query of it waits, and what to do with an answer.
// The poller calls all three from its own goroutine, one at a time.
type Querier[T any] interface {
	// Query asks once, with q's index, wait, token and context. When
	// leader is set, it must ask the leader: neither stale nor cached.
	Query(client *api.Client, q *api.QueryOptions, leader bool) (T, *api.QueryMeta, error)
	// Wait is the next blocking query's wait.
	Wait() time.Duration
	// Apply takes a believed answer, publishing it if it changed things.
	Apply(answer T)
}

// PollerOptions are a poller's settings beyond its connection and querier.
type PollerOptions struct {
	// Subject is what is watched, for logs, metrics and events: a
	// service's name, or "(catalog)".
	Subject string
	// Datacenter is the datacenter asked.
	Datacenter string
	// Clock is the poller's time, injected by tests; default: RealClock.
	Clock Clock
	// Limiter paces the queries, injected by tests; default: NewLimiter's.
	Limiter Limiter
	// Distrust is how long answers are checked after an outage, shortened
	// by tests; default: DistrustAfterOutage.
	Distrust time.Duration
	// Logger returns the logger to use, looked up on each use; default:
	// Caddy's "mesh.consul".
	Logger func() *zap.Logger
}

// Poller asks Consul one blocking question over and over, on a goroutine
// of its own: what every watch shares. It paces its queries (rate limit,
// backoff), follows Consul's rules for blocking indexes, keeps what it last
// learned while Consul fails, does not roll back to an older index after
// an outage, and logs and announces an outage once when it starts and once
// when it ends. Its Querier says how to ask and what to do with an answer.
type Poller[T any] struct {
	subject    string
	datacenter string
	conn       Connection
	client     *api.Client
	http       *http.Client
	logger     func() *zap.Logger
	clock      Clock
	pacer      *Pacer
	querier    Querier[T]
	distrust   time.Duration
	status     atomic.Pointer[Status]
	leader     *leaderCheck // the connection's, from start to stop
	leaderKey  leaderKey

	Changes // the owner signals each answer it publishes

	tried     chan struct{} // closed once the first query's outcome is recorded
	triedOnce sync.Once
	cancel    context.CancelFunc
	done      chan struct{}

	// the goroutine's own state
	index         uint64
	served        uint64    // Consul's index of the last answer applied
	behind        bool      // holding back an answer older than served: ask the leader
	distrustUntil time.Time // end of the distrust after the last outage
	failingSince  time.Time
}

// NewPoller returns a poller over conn asking what q says, ready to Start.
func NewPoller[T any](conn Connection, q Querier[T], opts PollerOptions) (*Poller[T], error) {
	client, httpClient, err := conn.NewClient()
	if err != nil {
		return nil, err
	}
	p := &Poller[T]{
		subject:    opts.Subject,
		datacenter: opts.Datacenter,
		conn:       conn,
		client:     client,
		http:       httpClient,
		logger:     opts.Logger,
		clock:      cmp.Or(opts.Clock, RealClock),
		querier:    q,
		distrust:   cmp.Or(opts.Distrust, DistrustAfterOutage),
		tried:      make(chan struct{}),
		done:       make(chan struct{}),
	}
	if p.logger == nil {
		p.logger = defaultLogger
	}
	p.pacer = NewPacer(p.clock, opts.Limiter)
	p.status.Store(&Status{})
	return p, nil
}

func defaultLogger() *zap.Logger { return caddy.Log().Named("mesh.consul") }

// Start runs the loop on a goroutine of its own, with the connection's
// shared leader check.
func (p *Poller[T]) Start() error {
	leader, key, err := takeLeaderCheck(p.conn, p.datacenter)
	if err != nil {
		return err
	}
	p.leader, p.leaderKey = leader, key
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	go p.run(ctx)
	return nil
}

// Stop stops the loop and waits for its goroutine to end. It implements
// Watch, for a poller that is a registry's watch itself.
func (p *Poller[T]) Stop() {
	p.cancel()
	<-p.done
	leaderChecks.Release(p.leaderKey)
	p.http.CloseIdleConnections()
}

// Tried is closed once the first query's outcome is recorded: after its
// answer is applied, or once it failed.
func (p *Poller[T]) Tried() <-chan struct{} { return p.tried }

// Client is the poller's API client, for its querier.
func (p *Poller[T]) Client() *api.Client { return p.client }

// Clock is the poller's clock.
func (p *Poller[T]) Clock() Clock { return p.clock }

// Subject and Datacenter are what is watched and where.
func (p *Poller[T]) Subject() string { return p.subject }

// Datacenter is the datacenter asked.
func (p *Poller[T]) Datacenter() string { return p.datacenter }

// Status is how the poller has fared with Consul lately.
func (p *Poller[T]) Status() *Status { return p.status.Load() }

// Staleness is how old what the poller serves may be at now (see
// Status.Staleness).
func (p *Poller[T]) Staleness(now time.Time) time.Duration {
	return p.Status().Staleness(now, p.LeaderState())
}

// KnownLeader is whether Consul last said it has a leader.
func (p *Poller[T]) KnownLeader() bool { return p.Status().KnownLeader(p.LeaderState()) }

// DistrustUntil is when the distrust after the last outage ends. Only the
// querier's Apply may call it, on the poller's goroutine.
func (p *Poller[T]) DistrustUntil() time.Time { return p.distrustUntil }

// LeaderState is what the connection's leader check last found.
func (p *Poller[T]) LeaderState() *LeaderState {
	if p.leader == nil {
		return &LeaderState{}
	}
	return p.leader.state.Load()
}

// Log returns the logger for this poller. It is looked up on each use,
// which is rare, because a poller outlives the config whose logs were
// current when it started.
func (p *Poller[T]) Log() *zap.Logger {
	return p.logger().With(zap.String("service", p.subject), zap.String("datacenter", p.datacenter))
}

func (p *Poller[T]) run(ctx context.Context) {
	defer close(p.done)
	for p.pacer.Ready(ctx) {
		started := time.Now()
		answer, meta, err := p.fetch(ctx)
		if ctx.Err() != nil {
			return
		}
		metrics.countQuery(p.subject, time.Since(started), err)
		if err != nil {
			p.failed(err)
			p.triedOnce.Do(func() { close(p.tried) })
			if !p.pacer.Failed(ctx) {
				return
			}
			continue
		}
		p.index = NextIndex(p.index, meta.LastIndex)
		p.succeeded()
		believed := p.believes(meta.LastIndex)
		p.record(meta, believed)
		if believed {
			p.served = meta.LastIndex
			p.querier.Apply(answer)
		}
		p.triedOnce.Do(func() { close(p.tried) }) // after apply: the answer is current
	}
}

// fetch runs one blocking query from the current index; or, when an
// answer older than what was served is held back, asks the leader at once.
func (p *Poller[T]) fetch(ctx context.Context) (T, *api.QueryMeta, error) {
	wait, index := p.querier.Wait(), p.index
	if p.behind {
		wait, index = min(wait, max(p.distrustUntil.Sub(p.clock.Now()), time.Millisecond)), 0
	}
	ctx, cancel := context.WithTimeout(ctx, QueryTimeout(wait))
	defer cancel()
	q := &api.QueryOptions{WaitIndex: index, WaitTime: wait, Token: p.conn.token}
	return p.querier.Query(p.client, q.WithContext(ctx), p.behind)
}

// NextIndex follows Consul's rules for blocking indexes: start over when
// the index goes backwards, and never send an index below 1 after the
// first query.
func NextIndex(previous, returned uint64) uint64 {
	switch {
	case returned < previous:
		return 0
	case returned < 1:
		return 1
	default:
		return returned
	}
}

// failed records a failed query. What was learned stays current, as
// confirmed as it was until now; the outage is logged and announced once,
// when it starts.
func (p *Poller[T]) failed(err error) {
	p.index = 0 // whoever answers next may be a restarted agent with other indexes
	now := p.clock.Now()
	if p.pacer.Failures() == 0 {
		p.failingSince = now
		p.Log().Warn("consul query failed; serving what it last answered until it answers again", zap.Error(err))
		Emit(EventConsulUnreachable, p.EventData(map[string]any{"error": err.Error()}))
	}
	status := *p.status.Load()
	status.ConfirmedAt = status.Confirmed(now, p.LeaderState())
	status.Err, status.FailingSince = err.Error(), p.failingSince
	p.status.Store(&status)
}

// succeeded ends an outage, if there was one: Consul's answers are
// distrusted for a while from now on.
func (p *Poller[T]) succeeded() {
	if p.pacer.Failures() == 0 {
		return
	}
	now := p.clock.Now()
	outage := now.Sub(p.failingSince)
	p.Log().Info("consul answers again", zap.Int("failed_queries", p.pacer.Failures()), zap.Duration("outage", outage))
	Emit(EventConsulRecovered, p.EventData(map[string]any{"outage": outage.String()}))
	p.pacer.Succeeded()
	p.distrustUntil = now.Add(p.distrust)
}

// believes reports whether an answer at index may be applied. After an
// outage, an answer older than what was served may come from a server that
// has not caught up (a cluster restarted, replaying its log): it is held
// back, and the leader is asked, whose answer is believed; its index is
// below what was served only when Consul's history started over (an agent
// restarted empty). While the leader cannot answer, what was served stays,
// until the distrust ends.
func (p *Poller[T]) believes(index uint64) bool {
	if p.behind { // the leader's answer
		p.behind = false
		if index < p.served {
			p.Log().Warn("consul's leader confirms an index older than what was served before the outage; believing it (its history started over)",
				zap.Uint64("index", index), zap.Uint64("served", p.served))
		} else {
			p.Log().Info("consul's leader is past what was served before the outage", zap.Uint64("index", index))
		}
		return true
	}
	if index >= p.served || !p.clock.Now().Before(p.distrustUntil) {
		return true
	}
	p.Log().Warn("consul answers with an older index than it served before the outage; keeping what it served and asking the leader",
		zap.Uint64("index", index), zap.Uint64("served", p.served))
	p.behind = true
	return false
}

// record keeps how Consul answered: when, at which index, and whether it
// confirmed what is served.
func (p *Poller[T]) record(meta *api.QueryMeta, believed bool) {
	now := p.clock.Now()
	status := *p.status.Load()
	status.Err, status.FailingSince = "", time.Time{}
	status.Index, status.SyncedAt, status.Behind = meta.LastIndex, now, !believed
	status.AnswerLeader, status.LastContact = meta.KnownLeader, meta.LastContact
	if believed && (meta.KnownLeader || p.LeaderState().Known) {
		status.ConfirmedAt = now
	}
	p.status.Store(&status)
}

// EventData is data for an event about this poller's subject: data, with
// the service and the datacenter added.
func (p *Poller[T]) EventData(data map[string]any) map[string]any {
	data["service"] = p.subject
	data["datacenter"] = p.datacenter
	return data
}

// Changes signals the subscribers of a poller each time its owner
// publishes a new answer.
type Changes struct {
	mu   sync.Mutex
	subs map[chan<- struct{}]struct{}
}

// Subscribe makes ch receive a signal after each change. The signal is
// dropped when ch is full: give it a buffer of one, and any number of
// changes before the subscriber looks make one signal.
func (c *Changes) Subscribe(ch chan<- struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.subs == nil {
		c.subs = make(map[chan<- struct{}]struct{})
	}
	c.subs[ch] = struct{}{}
}

// Unsubscribe stops signals to ch.
func (c *Changes) Unsubscribe(ch chan<- struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.subs, ch)
}

// Notify signals every subscriber, without waiting for any.
func (c *Changes) Notify() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for ch := range c.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// PollLoop names a poller's goroutine in stack traces, for the tests that
// count the watches running.
const PollLoop = "consul.(*Poller[...]).run"
