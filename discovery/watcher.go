package discovery

import (
	"context"
	"maps"
	"slices"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"

	"github.com/caddymesh/caddymesh/internal/pool"
)

// distrustEmptyFor is how long after an outage an answer with no healthy
// instance is not believed while the last good set had some: a restarted
// agent answers empty until its services re-register.
const distrustEmptyFor = 30 * time.Second

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

// watcher keeps the answer to one Consul health query current, with
// blocking queries on a goroutine of its own. Readers call current.Load.
type watcher struct {
	*poller[[]*api.ServiceEntry]
	key           watchKey
	distrustEmpty time.Duration
	current       atomic.Pointer[answer]
	// tags and userFilter are the configured tags and filter that key.filter
	// combines, for the admin API.
	tags       []string
	userFilter string

	// the poller goroutine's own state
	distrustEmptyUntil time.Time
	holdingLastGood    bool
	knownEmpty         bool
}

// newWatcher returns a watcher ready to start.
func newWatcher(key watchKey, conn connection) (*watcher, error) {
	p, err := newPoller[[]*api.ServiceEntry](key.service, key.datacenter, conn)
	if err != nil {
		return nil, err
	}
	w := &watcher{poller: p, key: key, distrustEmpty: distrustEmptyFor}
	p.query, p.wait, p.apply = w.query, w.waitTime, w.apply
	p.recovered = func() { w.distrustEmptyUntil = time.Now().Add(w.distrustEmpty) }
	return w, nil
}

// Destruct stops the watcher and waits for its goroutine to end. The usage
// pool calls it when the last user lets go.
func (w *watcher) Destruct() error {
	w.stop()
	return nil
}

// query asks Consul for the service's instances, with their checks.
func (w *watcher) query(_ context.Context, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	q.Datacenter = w.key.datacenter
	q.Filter = w.key.filter
	q.Near = w.key.near
	q.AllowStale = w.key.consistency == consistencyStale
	q.UseCache = w.key.consistency == consistencyCached
	return w.client.Health().Service(w.key.service, "", false, q)
}

// waitTime is the next query's wait: the configured one, cut short while
// an empty answer is held back, so as to believe it in time.
func (w *watcher) waitTime() time.Duration {
	if d := time.Until(w.distrustEmptyUntil); d > 0 && w.holdingLastGood {
		return min(w.key.wait, d)
	}
	return w.key.wait
}

// apply publishes what Consul answered, if it differs from the current
// answer and is believable.
func (w *watcher) apply(entries []*api.ServiceEntry) {
	w.noteEmptiness(len(entries) == 0)
	found := classify(entries, w.key.health)
	previous := w.current.Load()
	if w.distrusts(found, previous) {
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
	w.current.Store(next)
	w.notify()
	metrics.countUpdate(w.key.service)
	healthy, total := len(next.healthy.Instances), len(next.all.Instances)
	w.log().Debug("instances changed", zap.Int("healthy", healthy), zap.Int("total", total))
	emit(eventUpstreamsChanged, w.eventData(map[string]any{"healthy": healthy, "total": total}))
}

// distrusts reports whether an answer with no healthy instance, right after
// an outage, should be held back in favour of the last good one.
func (w *watcher) distrusts(found classified, previous *answer) bool {
	hold := len(found.healthy) == 0 && previous != nil && len(previous.healthy.Instances) > 0 &&
		time.Now().Before(w.distrustEmptyUntil)
	if hold && !w.holdingLastGood {
		w.log().Warn("consul answers with no healthy instance right after an outage; keeping the last known instances for now",
			zap.Time("until", w.distrustEmptyUntil))
	}
	w.holdingLastGood = hold
	return hold
}

// noteEmptiness warns, once per change, when Consul knows no instance of the
// service at all: usually a misspelt or not yet registered service.
func (w *watcher) noteEmptiness(empty bool) {
	if empty && !w.knownEmpty {
		w.log().Warn("consul has no instance of this service; check its name, tags and filter")
	}
	w.knownEmpty = empty
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
