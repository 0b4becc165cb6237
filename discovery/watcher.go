package discovery

import (
	"context"
	"maps"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/caddymesh/caddymesh/internal/pool"
)

// Tuning of the watch loop. They are constants, not options: they keep
// Consul safe from caddymesh whatever the config says.
const (
	// queryInterval and queryBurst rate-limit each watcher's queries: a
	// quiet service is answered at once, a churning one degrades into
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

	// distrustEmptyFor is how long after an outage an answer with no
	// healthy instance is not believed while the last good set had some:
	// a restarted agent answers empty until its services re-register.
	distrustEmptyFor = 30 * time.Second
)

// watchers holds one watcher per watch key, shared by every source and every
// config that watches the same thing; a watcher stops when its last user
// is cleaned up.
var watchers = caddy.NewUsagePool()

// forEachWatcher calls f with every running watcher and the number of
// sources using it.
func forEachWatcher(f func(w *watcher, users int)) {
	var keys []any
	var found []*watcher
	watchers.Range(func(key, value any) bool {
		if w, ok := value.(*watcher); ok {
			keys, found = append(keys, key), append(found, w)
		}
		return true
	})
	for i, w := range found { // References locks the pool, which Range holds
		users, _ := watchers.References(keys[i])
		f(w, users)
	}
}

// watchKey is everything that makes two watches differ.
type watchKey struct {
	endpoint
	service     string
	datacenter  string
	filter      string
	health      string
	near        string
	consistency string
	wait        time.Duration
}

// answer is the last good state of a watched service, replaced whole.
type answer struct {
	// healthy are the instances in rotation.
	healthy *pool.Snapshot
	// all are the instances not in maintenance, healthy or not: what panic
	// mode serves. It is healthy itself when every instance is healthy.
	all *pool.Snapshot
	// maintenance counts the instances left out for maintenance.
	maintenance int
}

// watchStatus is how a watch has fared with Consul lately.
type watchStatus struct {
	index        uint64    // Consul's index of the last answer
	syncedAt     time.Time // when Consul last answered
	err          string    // the last query's error, if it failed
	failingSince time.Time // when the current outage began; zero if none
}

// staleness is how old the instances served may be: nothing while a
// blocking query is in flight (Consul answers it at once on a change), the
// time since Consul last answered while queries fail.
func (s *watchStatus) staleness() time.Duration {
	if s.failingSince.IsZero() || s.syncedAt.IsZero() {
		return 0
	}
	return time.Since(s.syncedAt)
}

// watcher keeps the answer to one Consul health query current, with
// blocking queries on a goroutine of its own. Readers call current.Load.
type watcher struct {
	key           watchKey
	token         string
	client        *api.Client
	http          *http.Client
	logger        func() *zap.Logger
	limiter       *rate.Limiter
	distrustEmpty time.Duration

	current atomic.Pointer[answer]
	status  atomic.Pointer[watchStatus]
	// tags and userFilter are the configured tags and filter that key.filter
	// combines, for the admin API.
	tags       []string
	userFilter string

	tried     chan struct{} // closed once the first query's outcome is recorded
	triedOnce sync.Once
	cancel    context.CancelFunc
	done      chan struct{}
}

// newWatcher returns a watcher ready to start.
func newWatcher(key watchKey, conn connection) (*watcher, error) {
	client, httpClient, err := conn.newClient()
	if err != nil {
		return nil, err
	}
	w := &watcher{
		key:           key,
		token:         conn.token,
		client:        client,
		http:          httpClient,
		logger:        func() *zap.Logger { return caddy.Log().Named("mesh.consul") },
		limiter:       rate.NewLimiter(rate.Every(queryInterval), queryBurst),
		distrustEmpty: distrustEmptyFor,
		tried:         make(chan struct{}),
		done:          make(chan struct{}),
	}
	w.status.Store(&watchStatus{})
	return w, nil
}

// start runs the watch loop on a goroutine of its own.
func (w *watcher) start() {
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	go w.run(ctx)
}

// Destruct stops the watcher and waits for its goroutine to end. The usage
// pool calls it when the last user lets go.
func (w *watcher) Destruct() error {
	w.cancel()
	<-w.done
	w.http.CloseIdleConnections()
	return nil
}

// log returns the logger for this watch. It is looked up on each use, which
// is rare, because a watcher outlives the config whose logs were current
// when it started.
func (w *watcher) log() *zap.Logger {
	return w.logger().With(zap.String("service", w.key.service), zap.String("datacenter", w.key.datacenter))
}

// loop is the state of a watcher's goroutine; nothing else touches it.
type loop struct {
	*watcher
	index              uint64
	failures           int
	failingSince       time.Time
	distrustEmptyUntil time.Time
	holdingLastGood    bool
	knownEmpty         bool
}

func (w *watcher) run(ctx context.Context) {
	defer close(w.done)
	l := &loop{watcher: w}
	for l.limiter.Wait(ctx) == nil {
		started := time.Now()
		entries, lastIndex, err := l.fetch(ctx)
		if ctx.Err() != nil {
			return
		}
		metrics.countQuery(l.key.service, time.Since(started), err)
		if err != nil {
			l.failed(err)
			l.triedOnce.Do(func() { close(l.tried) })
			if !sleep(ctx, backoff(l.failures)) {
				return
			}
			continue
		}
		l.index = nextIndex(l.index, lastIndex)
		l.succeeded()
		l.apply(entries)
		l.triedOnce.Do(func() { close(l.tried) }) // after apply: the answer is current
	}
}

// fetch runs one blocking query from the current index.
func (l *loop) fetch(ctx context.Context) ([]*api.ServiceEntry, uint64, error) {
	wait := l.key.wait
	if d := time.Until(l.distrustEmptyUntil); d > 0 && l.holdingLastGood {
		wait = min(wait, d) // come back in time to believe the empty answer
	}
	ctx, cancel := context.WithTimeout(ctx, wait+wait/16+requestSlack)
	defer cancel()
	opts := &api.QueryOptions{
		Datacenter: l.key.datacenter,
		Filter:     l.key.filter,
		Near:       l.key.near,
		AllowStale: l.key.consistency == consistencyStale,
		UseCache:   l.key.consistency == consistencyCached,
		WaitIndex:  l.index,
		WaitTime:   wait,
		Token:      l.token,
	}
	entries, meta, err := l.client.Health().Service(l.key.service, "", false, opts.WithContext(ctx))
	if err != nil {
		return nil, 0, err
	}
	return entries, meta.LastIndex, nil
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

// failed records a failed query. The last good answer stays current; the
// outage is logged and announced once, when it starts.
func (l *loop) failed(err error) {
	l.failures++
	l.index = 0 // whoever answers next may be a restarted agent with other indexes
	if l.failures == 1 {
		l.failingSince = time.Now()
		l.log().Warn("consul query failed; serving the last known instances until it answers again",
			zap.Error(err), zap.Bool("have_instances", l.current.Load() != nil))
		emit(eventConsulUnreachable, l.eventData(map[string]any{"error": err.Error()}))
	}
	status := *l.status.Load()
	status.err, status.failingSince = err.Error(), l.failingSince
	l.status.Store(&status)
}

// succeeded records an answer, and ends an outage if there was one.
func (l *loop) succeeded() {
	if l.failures > 0 {
		outage := time.Since(l.failingSince)
		l.log().Info("consul answers again", zap.Int("failed_queries", l.failures), zap.Duration("outage", outage))
		emit(eventConsulRecovered, l.eventData(map[string]any{"outage": outage.String()}))
		l.failures = 0
		l.distrustEmptyUntil = time.Now().Add(l.distrustEmpty)
	}
	l.status.Store(&watchStatus{index: l.index, syncedAt: time.Now()})
}

// eventData is data for an event about this watch.
func (l *loop) eventData(data map[string]any) map[string]any {
	data["service"] = l.key.service
	data["datacenter"] = l.key.datacenter
	return data
}

// apply publishes what Consul answered, if it differs from the current
// answer and is believable.
func (l *loop) apply(entries []*api.ServiceEntry) {
	l.noteEmptiness(len(entries) == 0)
	found := classify(entries, l.key.health)
	previous := l.current.Load()
	if l.distrusts(found, previous) {
		return
	}
	var before answer
	if previous != nil {
		before = *previous
	}
	next := &answer{healthy: reuse(before.healthy, found.healthy), maintenance: found.maintenance}
	next.all = next.healthy
	if !sameInstances(found.all, found.healthy) {
		next.all = reuse(before.all, found.all)
	}
	if *next == before {
		return
	}
	l.current.Store(next)
	metrics.countUpdate(l.key.service)
	healthy, total := len(next.healthy.Instances), len(next.all.Instances)
	l.log().Debug("instances changed", zap.Int("healthy", healthy), zap.Int("total", total))
	emit(eventUpstreamsChanged, l.eventData(map[string]any{"healthy": healthy, "total": total}))
}

// distrusts reports whether an answer with no healthy instance, right after
// an outage, should be held back in favour of the last good one.
func (l *loop) distrusts(found classified, previous *answer) bool {
	hold := len(found.healthy) == 0 && previous != nil && len(previous.healthy.Instances) > 0 &&
		time.Now().Before(l.distrustEmptyUntil)
	if hold && !l.holdingLastGood {
		l.log().Warn("consul answers with no healthy instance right after an outage; keeping the last known instances for now",
			zap.Time("until", l.distrustEmptyUntil))
	}
	l.holdingLastGood = hold
	return hold
}

// noteEmptiness warns, once per change, when Consul knows no instance of the
// service at all: usually a misspelt or not yet registered service.
func (l *loop) noteEmptiness(empty bool) {
	if empty && !l.knownEmpty {
		l.log().Warn("consul has no instance of this service; check its name, tags and filter")
	}
	l.knownEmpty = empty
}

// reuse returns old when it holds the same instances, so that its version,
// and whatever policies built for it, carry over; otherwise a new snapshot.
func reuse(old *pool.Snapshot, instances []pool.Instance) *pool.Snapshot {
	if old != nil && sameInstances(old.Instances, instances) {
		return old
	}
	return pool.NewSnapshot(instances)
}

func sameInstances(a, b []pool.Instance) bool {
	return slices.EqualFunc(a, b, func(x, y pool.Instance) bool {
		return x.ID == y.ID && x.Dial == y.Dial && x.Weight == y.Weight && x.Health == y.Health &&
			x.Node == y.Node && x.Datacenter == y.Datacenter &&
			slices.Equal(x.Tags, y.Tags) && maps.Equal(x.Meta, y.Meta)
	})
}

// backoff is the pause after the n-th failure in a row: exponential from
// retryBase up to retryMax, with half of it random so that watchers that
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
