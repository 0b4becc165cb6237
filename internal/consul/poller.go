package discovery

import (
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

// distrustAfterOutage is how long after an outage Consul's answers are
// checked against what was served before it: an answer older than that
// (a server still replaying its log), or one with no healthy instance where
// there were some (an agent whose services have not registered again), is
// not believed until Consul catches up or this time has passed.
const distrustAfterOutage = 30 * time.Second

// poller asks Consul one blocking question over and over, on a goroutine
// of its own: what the health, catalog and intentions watches share. It
// paces its queries (rate limit, backoff), follows Consul's rules for
// blocking indexes, keeps what it last learned while Consul fails, does not
// roll back to an older index after an outage, and logs and announces an
// outage once when it starts and once when it ends. Its owner says how to
// ask (query, wait) and what to do with an answer (apply).
type poller[T any] struct {
	subject    string // the service watched, for logs, metrics and events
	datacenter string
	conn       connection
	client     *api.Client
	http       *http.Client
	logger     func() *zap.Logger
	clock      clock
	pacer      *pacer
	distrust   time.Duration // distrustAfterOutage, shortened by tests
	status     atomic.Pointer[watchStatus]
	leader     *leaderCheck // the connection's, from start to stop
	leaderKey  leaderKey

	query func(ctx context.Context, q *api.QueryOptions) (T, *api.QueryMeta, error)
	wait  func() time.Duration // the next query's wait
	apply func(T)

	changes // its owner signals each answer it publishes

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

// watchStatus is how a poller has fared with Consul lately.
type watchStatus struct {
	index        uint64        // Consul's index of the last answer
	syncedAt     time.Time     // when Consul last answered
	confirmedAt  time.Time     // when Consul last confirmed what is served
	lastContact  time.Duration // of the server behind the last answer with its leader
	answerLeader bool          // whether the last answer said a leader was known
	behind       bool          // the last answer is older than what is served
	err          string        // the last query's error, if it failed
	failingSince time.Time     // when the current outage began; zero if none
}

// blocking reports whether a blocking query from the last answer is in
// flight: Consul answers it at once on a change, so it keeps confirming
// what is served while its datacenter has a leader.
func (s *watchStatus) blocking() bool {
	return s.err == "" && !s.syncedAt.IsZero() && !s.behind
}

// confirmed is when Consul last confirmed what is served: at the last
// answer given while a leader was known, or continuously while a blocking
// query is in flight and the connection's leader check finds a leader.
func (s *watchStatus) confirmed(now time.Time, leader *leaderState) time.Time {
	if !s.blocking() {
		return s.confirmedAt
	}
	if leader.known {
		return now
	}
	return latest(s.confirmedAt, leader.lastFound)
}

// staleness is how old what a poller serves may be: the time since Consul
// last confirmed it, plus how far the answering server lagged its leader
// (X-Consul-LastContact, in stale mode). Zero before the first answer.
func (s *watchStatus) staleness(now time.Time, leader *leaderState) time.Duration {
	if s.syncedAt.IsZero() {
		return 0
	}
	confirmed := s.confirmed(now, leader)
	if confirmed.IsZero() { // answered, but never with a leader known
		confirmed = s.syncedAt
	}
	return max(now.Sub(confirmed), 0) + s.lastContact
}

// knownLeader is whether Consul last said it has a leader: the newer of
// the connection's leader check and the last answer's header.
func (s *watchStatus) knownLeader(leader *leaderState) bool {
	if leader.checked.After(s.syncedAt) {
		return leader.known
	}
	return s.answerLeader || leader.known
}

// latest returns the later of two times.
func latest(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
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
		conn:       conn,
		client:     client,
		http:       httpClient,
		logger:     func() *zap.Logger { return caddy.Log().Named("mesh.consul") },
		clock:      realClock,
		distrust:   distrustAfterOutage,
		tried:      make(chan struct{}),
		done:       make(chan struct{}),
	}
	p.status.Store(&watchStatus{})
	return p, nil
}

// start runs the loop on a goroutine of its own, with the connection's
// shared leader check.
func (p *poller[T]) start() error {
	leader, key, err := takeLeaderCheck(p.conn, p.datacenter)
	if err != nil {
		return err
	}
	p.leader, p.leaderKey = leader, key
	p.pacer = newPacer(p.clock)
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	go p.run(ctx)
	return nil
}

// stop stops the loop and waits for its goroutine to end.
func (p *poller[T]) stop() {
	p.cancel()
	<-p.done
	releaseLeaderCheck(p.leaderKey)
	p.http.CloseIdleConnections()
}

// leaderState is what the connection's leader check last found.
func (p *poller[T]) leaderState() *leaderState {
	if p.leader == nil {
		return &leaderState{}
	}
	return p.leader.state.Load()
}

// log returns the logger for this poller. It is looked up on each use,
// which is rare, because a poller outlives the config whose logs were
// current when it started.
func (p *poller[T]) log() *zap.Logger {
	return p.logger().With(zap.String("service", p.subject), zap.String("datacenter", p.datacenter))
}

func (p *poller[T]) run(ctx context.Context) {
	defer close(p.done)
	for p.pacer.ready(ctx) {
		started := time.Now()
		answer, meta, err := p.fetch(ctx)
		if ctx.Err() != nil {
			return
		}
		metrics.countQuery(p.subject, time.Since(started), err)
		if err != nil {
			p.failed(err)
			p.triedOnce.Do(func() { close(p.tried) })
			if !p.pacer.failed(ctx) {
				return
			}
			continue
		}
		p.index = nextIndex(p.index, meta.LastIndex)
		p.succeeded()
		believed := p.believes(meta.LastIndex)
		p.record(meta, believed)
		if believed {
			p.served = meta.LastIndex
			p.apply(answer)
		}
		p.triedOnce.Do(func() { close(p.tried) }) // after apply: the answer is current
	}
}

// fetch runs one blocking query from the current index; or, when an
// answer older than what was served is held back, asks the leader at once.
func (p *poller[T]) fetch(ctx context.Context) (T, *api.QueryMeta, error) {
	wait, index := p.wait(), p.index
	if p.behind {
		wait, index = min(wait, max(p.distrustUntil.Sub(p.clock.now()), time.Millisecond)), 0
	}
	ctx, cancel := context.WithTimeout(ctx, wait+wait/16+requestSlack)
	defer cancel()
	q := &api.QueryOptions{WaitIndex: index, WaitTime: wait, Token: p.conn.token}
	return p.query(ctx, q.WithContext(ctx))
}

// asksLeader reports whether the next query must go to the leader, not to
// any server (stale) or the agent's cache (cached): owners' queries honour
// it.
func (p *poller[T]) asksLeader() bool { return p.behind }

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

// failed records a failed query. What was learned stays current, as
// confirmed as it was until now; the outage is logged and announced once,
// when it starts.
func (p *poller[T]) failed(err error) {
	p.index = 0 // whoever answers next may be a restarted agent with other indexes
	now := p.clock.now()
	if p.pacer.failures == 0 {
		p.failingSince = now
		p.log().Warn("consul query failed; serving what it last answered until it answers again", zap.Error(err))
		emit(eventConsulUnreachable, p.eventData(map[string]any{"error": err.Error()}))
	}
	status := *p.status.Load()
	status.confirmedAt = status.confirmed(now, p.leaderState())
	status.err, status.failingSince = err.Error(), p.failingSince
	p.status.Store(&status)
}

// succeeded ends an outage, if there was one: Consul's answers are
// distrusted for a while from now on.
func (p *poller[T]) succeeded() {
	if p.pacer.failures == 0 {
		return
	}
	now := p.clock.now()
	outage := now.Sub(p.failingSince)
	p.log().Info("consul answers again", zap.Int("failed_queries", p.pacer.failures), zap.Duration("outage", outage))
	emit(eventConsulRecovered, p.eventData(map[string]any{"outage": outage.String()}))
	p.pacer.succeeded()
	p.distrustUntil = now.Add(p.distrust)
}

// believes reports whether an answer at index may be applied. After an
// outage, an answer older than what was served may come from a server that
// has not caught up (a cluster restarted, replaying its log): it is held
// back, and the leader is asked, whose answer is believed; its index is
// below what was served only when Consul's history started over (an agent
// restarted empty). While the leader cannot answer, what was served stays,
// until the distrust ends.
func (p *poller[T]) believes(index uint64) bool {
	if p.behind { // the leader's answer
		p.behind = false
		if index < p.served {
			p.log().Warn("consul's leader confirms an index older than what was served before the outage; believing it (its history started over)",
				zap.Uint64("index", index), zap.Uint64("served", p.served))
		} else {
			p.log().Info("consul's leader is past what was served before the outage", zap.Uint64("index", index))
		}
		return true
	}
	if index >= p.served || !p.clock.now().Before(p.distrustUntil) {
		return true
	}
	p.log().Warn("consul answers with an older index than it served before the outage; keeping what it served and asking the leader",
		zap.Uint64("index", index), zap.Uint64("served", p.served))
	p.behind = true
	return false
}

// record keeps how Consul answered: when, at which index, and whether it
// confirmed what is served.
func (p *poller[T]) record(meta *api.QueryMeta, believed bool) {
	now := p.clock.now()
	status := *p.status.Load()
	status.err, status.failingSince = "", time.Time{}
	status.index, status.syncedAt, status.behind = meta.LastIndex, now, !believed
	status.answerLeader, status.lastContact = meta.KnownLeader, meta.LastContact
	if believed && (meta.KnownLeader || p.leaderState().known) {
		status.confirmedAt = now
	}
	p.status.Store(&status)
}

// eventData is data for an event about this poller's subject.
func (p *poller[T]) eventData(data map[string]any) map[string]any {
	data["service"] = p.subject
	data["datacenter"] = p.datacenter
	return data
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
