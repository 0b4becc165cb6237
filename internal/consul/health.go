package consul

import (
	"maps"
	"slices"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"

	"github.com/caddymesh/caddymesh/internal/pool"
)

// Consistency modes of the queries to Consul.
const (
	// ConsistencyDefault asks the leader.
	ConsistencyDefault = "default"
	// ConsistencyStale lets any server answer.
	ConsistencyStale = "stale"
	// ConsistencyCached answers from the local agent's cache.
	ConsistencyCached = "cached"
)

// DefaultWait is a blocking query's wait unless configured.
const DefaultWait = 5 * time.Minute

// DefaultHoldLast is how long a watch keeps serving its last healthy
// instances when Consul's answer drops them all at once (hold_last).
const DefaultHoldLast = 10 * time.Second

// HealthWatches holds one health watch per key, shared by every upstream
// source, router and config that watches the same thing.
var HealthWatches = NewRegistry[HealthKey, *HealthWatch]()

// HealthKey is everything that makes two health watches differ.
type HealthKey struct {
	Endpoint
	// Service is the service watched.
	Service string
	// Datacenter is the datacenter asked.
	Datacenter string
	// Filter is the Consul filter of the query (tags and filter combined).
	Filter string
	// Health is HealthPassing or HealthWarning.
	Health string
	// Near orders instances by round-trip time from a node.
	Near string
	// Consistency is ConsistencyDefault, ConsistencyStale or
	// ConsistencyCached.
	Consistency string
	// Wait is a blocking query's wait.
	Wait time.Duration
	// HoldLast is how long the last healthy instances are held (0: never).
	HoldLast time.Duration
	// Connect watches Consul's Connect catalog of the service
	// (/v1/health/connect/<service>): its sidecar proxies and its
	// Connect-native instances, each with the identity it presents.
	Connect bool
}

// Answer is the last good state of a watched service, replaced whole:
// readers get it with one atomic load.
type Answer struct {
	// Healthy are the instances in rotation.
	Healthy *pool.Snapshot
	// All are the instances not in maintenance, healthy or not: what
	// panic mode serves. It is Healthy itself when every instance is
	// healthy.
	All *pool.Snapshot
	// Maintenance counts the instances left out for maintenance.
	Maintenance int
	// HeldUntil is, while Healthy are the last healthy instances held
	// after Consul dropped them all (hold_last), when the hold ends; zero
	// otherwise.
	HeldUntil time.Time
}

// Held reports whether the healthy instances are merely held (hold_last).
func (a *Answer) Held() bool { return !a.HeldUntil.IsZero() }

// HealthWatch keeps the answer to one Consul health query
// (/v1/health/service/<service>) current, with blocking queries on a
// goroutine of its own. Readers call Current.
type HealthWatch struct {
	*Poller[[]*api.ServiceEntry]
	// Key is what the watch watches.
	Key HealthKey
	// Tags are the configured tags that Key.Filter combines, for the
	// admin API; set before Start.
	Tags []string
	// UserFilter is the configured filter that Key.Filter combines, for
	// the admin API; set before Start.
	UserFilter string

	current atomic.Pointer[Answer]

	// the poller goroutine's own state
	knownEmpty bool
}

// NewHealthWatch returns a health watch of key over conn, ready to Start.
// opts.Subject and opts.Datacenter are the key's.
func NewHealthWatch(key HealthKey, conn Connection, opts PollerOptions) (*HealthWatch, error) {
	w := &HealthWatch{Key: key}
	opts.Subject, opts.Datacenter = key.Service, key.Datacenter
	p, err := NewPoller(conn, Querier[[]*api.ServiceEntry](w), opts)
	if err != nil {
		return nil, err
	}
	w.Poller = p
	return w, nil
}

// Current is the last good answer; nil until Consul first answers.
func (w *HealthWatch) Current() *Answer { return w.current.Load() }

// Query asks Consul for the service's instances, with their checks.
func (w *HealthWatch) Query(client *api.Client, q *api.QueryOptions, leader bool) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	q.Datacenter = w.Key.Datacenter
	q.Filter = w.Key.Filter
	q.Near = w.Key.Near
	q.AllowStale = w.Key.Consistency == ConsistencyStale && !leader
	q.UseCache = w.Key.Consistency == ConsistencyCached && !leader
	if w.Key.Connect {
		return client.Health().Connect(w.Key.Service, "", false, q)
	}
	return client.Health().Service(w.Key.Service, "", false, q)
}

// Wait is the next query's wait: the configured one, cut short while the
// last instances are held, so as to believe an empty answer in time.
func (w *HealthWatch) Wait() time.Duration {
	if until := w.holdUntil(); !until.IsZero() {
		return min(w.Key.Wait, max(until.Sub(w.Clock().Now()), time.Millisecond))
	}
	return w.Key.Wait
}

// Apply publishes what Consul answered, if it differs from the current
// answer and is believable.
func (w *HealthWatch) Apply(entries []*api.ServiceEntry) {
	w.noteEmptiness(len(entries) == 0)
	found := classify(entries, w.Key.Health, w.Key.Connect)
	previous := w.current.Load()
	if w.holds(found, previous) {
		return
	}
	var before Answer
	if previous != nil {
		before = *previous
	}
	next := &Answer{Healthy: Reuse(before.Healthy, found.healthy), Maintenance: found.maintenance}
	next.All = next.Healthy
	if !sameInstances(found.all, found.healthy) {
		next.All = Reuse(before.All, found.all)
	}
	unheld := before
	unheld.HeldUntil = time.Time{}
	if *next == unheld { // nothing changed, but a hold may have ended
		if before.Held() {
			w.current.Store(next)
		}
		return
	}
	w.current.Store(next)
	w.Notify()
	metrics.countUpdate(w.Key.Service)
	healthy, total := len(next.Healthy.Instances), len(next.All.Instances)
	w.Log().Debug("instances changed", zap.Int("healthy", healthy), zap.Int("total", total))
	Emit(EventUpstreamsChanged, w.EventData(map[string]any{"healthy": healthy, "total": total}))
}

// holds reports whether to keep serving the last healthy instances instead
// of an answer where every instance vanished at once (none left, not even
// failing or in maintenance): a client agent that leaves gracefully takes
// every instance registered through it out of the catalog until they
// register again, and a restarted agent answers empty until they do. Right
// after an outage an answer with no healthy instance at all is held too.
// The hold lasts hold_last, and after an outage at least until the
// distrust ends; a real scale to zero takes effect after it. Failing
// checks are never held: they are Consul's word on health. A hold that
// ends is ended by the answer applied next, which holds nothing.
func (w *HealthWatch) holds(found classified, previous *Answer) bool {
	now := w.Clock().Now()
	vanished := len(found.all) == 0 && found.maintenance == 0
	afterOutage := now.Before(w.DistrustUntil())
	if len(found.healthy) > 0 || !vanished && !afterOutage || previous == nil || len(previous.Healthy.Instances) == 0 {
		if previous != nil && previous.Held() {
			w.Log().Info("healthy instances are back; no longer holding the last ones")
		}
		return false
	}
	if !previous.Held() {
		until := latest(now.Add(w.Key.HoldLast), w.DistrustUntil())
		if !now.Before(until) {
			return false
		}
		w.startHold(previous, until)
		return true
	}
	if now.Before(previous.HeldUntil) {
		return true
	}
	w.Log().Warn("still no healthy instance once hold_last has passed; believing consul")
	return false
}

// startHold starts holding the last healthy instances of previous until
// until: published, logged, counted and announced.
func (w *HealthWatch) startHold(previous *Answer, until time.Time) {
	held := *previous
	held.HeldUntil = until
	w.current.Store(&held)
	count := len(previous.Healthy.Instances)
	w.Log().Warn("consul answers with no healthy instance where it had some, all at once or right after an outage; keeping the last ones for now",
		zap.Int("held", count), zap.Time("until", until))
	metrics.countHold(w.Key.Service)
	Emit(EventHoldingLast, w.EventData(map[string]any{"held": count, "until": until.Format(time.RFC3339Nano)}))
}

// holdUntil is when the current hold ends; zero if none.
func (w *HealthWatch) holdUntil() time.Time {
	if a := w.current.Load(); a != nil {
		return a.HeldUntil
	}
	return time.Time{}
}

// noteEmptiness warns, once per change, when Consul knows no instance of the
// service at all: usually a misspelt or not yet registered service.
func (w *HealthWatch) noteEmptiness(empty bool) {
	if empty && !w.knownEmpty {
		w.Log().Warn("consul has no instance of this service; check its name, tags and filter")
	}
	w.knownEmpty = empty
}

// Reuse returns old when it holds the same instances, so that its version,
// and whatever policies built for it, carry over; otherwise a new snapshot.
func Reuse(old *pool.Snapshot, instances []pool.Instance) *pool.Snapshot {
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

// Interface guards
var (
	_ Watch                        = (*HealthWatch)(nil)
	_ Querier[[]*api.ServiceEntry] = (*HealthWatch)(nil)
)
