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

// defaultHoldLast is how long a watch keeps serving its last healthy
// instances when Consul's answer drops them all at once (hold_last).
const defaultHoldLast = 10 * time.Second

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
	holdLast    time.Duration
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
	key     watchKey
	current atomic.Pointer[answer]
	// holding is when the hold of the last healthy instances ends, while
	// one lasts; only the poller goroutine writes it.
	holding atomic.Pointer[time.Time]
	// tags and userFilter are the configured tags and filter that key.filter
	// combines, for the admin API.
	tags       []string
	userFilter string

	// the poller goroutine's own state
	knownEmpty bool
}

// newWatcher returns a watcher ready to start.
func newWatcher(key watchKey, conn connection) (*watcher, error) {
	p, err := newPoller[[]*api.ServiceEntry](key.service, key.datacenter, conn)
	if err != nil {
		return nil, err
	}
	w := &watcher{poller: p, key: key}
	p.query, p.wait, p.apply = w.query, w.waitTime, w.apply
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
	q.AllowStale = w.key.consistency == consistencyStale && !w.asksLeader()
	q.UseCache = w.key.consistency == consistencyCached && !w.asksLeader()
	return w.client.Health().Service(w.key.service, "", false, q)
}

// waitTime is the next query's wait: the configured one, cut short while
// the last instances are held, so as to believe an empty answer in time.
func (w *watcher) waitTime() time.Duration {
	if !w.holdUntil().IsZero() {
		return min(w.key.wait, max(w.holdUntil().Sub(w.clock.now()), time.Millisecond))
	}
	return w.key.wait
}

// apply publishes what Consul answered, if it differs from the current
// answer and is believable.
func (w *watcher) apply(entries []*api.ServiceEntry) {
	w.noteEmptiness(len(entries) == 0)
	found := classify(entries, w.key.health)
	previous := w.current.Load()
	if w.holds(found, previous) {
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

// holds reports whether to keep serving the last healthy instances instead
// of an answer where every instance vanished at once (none left, not even
// failing or in maintenance): a client agent that leaves gracefully takes
// every instance registered through it out of the catalog until they
// register again, and a restarted agent answers empty until they do. Right
// after an outage an answer with no healthy instance at all is held too.
// The hold lasts hold_last, and after an outage at least until the
// distrust ends; a real scale to zero takes effect after it. Failing
// checks are never held: they are Consul's word on health.
func (w *watcher) holds(found classified, previous *answer) bool {
	now := w.clock.now()
	vanished := len(found.all) == 0 && found.maintenance == 0
	afterOutage := now.Before(w.distrustUntil)
	if len(found.healthy) > 0 || !vanished && !afterOutage || previous == nil || len(previous.healthy.Instances) == 0 {
		if !w.holdUntil().IsZero() {
			w.log().Info("healthy instances are back; no longer holding the last ones")
			w.endHold()
		}
		return false
	}
	if w.holdUntil().IsZero() {
		until := latest(now.Add(w.key.holdLast), w.distrustUntil)
		if !now.Before(until) {
			return false
		}
		w.startHold(until, len(previous.healthy.Instances))
	}
	if now.Before(w.holdUntil()) {
		return true
	}
	w.log().Warn("still no healthy instance once hold_last has passed; believing consul")
	w.endHold()
	return false
}

// startHold starts holding the last healthy instances, of which there are
// held, until until: logged, counted and announced.
func (w *watcher) startHold(until time.Time, held int) {
	w.holding.Store(&until)
	w.log().Warn("consul answers with no healthy instance where it had some, all at once or right after an outage; keeping the last ones for now",
		zap.Int("held", held), zap.Time("until", until))
	metrics.countHold(w.key.service)
	emit(eventHoldingLast, w.eventData(map[string]any{"held": held, "until": until.Format(time.RFC3339Nano)}))
}

func (w *watcher) endHold() {
	w.holding.Store(nil)
}

// holdUntil is when the current hold ends; zero if none.
func (w *watcher) holdUntil() time.Time {
	if until := w.holding.Load(); until != nil {
		return *until
	}
	return time.Time{}
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
