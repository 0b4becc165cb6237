package discovery

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/hashicorp/go-bexpr"
	"go.uber.org/zap"

	"github.com/caddymesh/caddymesh/internal/pool"
)

func init() {
	caddy.RegisterModule(new(ConsulUpstreams))
}

// Consistency modes of the queries to Consul.
const (
	consistencyDefault = "default"
	consistencyStale   = "stale"
	consistencyCached  = "cached"
)

// Bounds of a blocking query's wait.
const (
	defaultWait = 5 * time.Minute
	maxWait     = 10 * time.Minute
)

// firstAnswerTimeout bounds how long provisioning waits for Consul's first
// answer, so that traffic does not start on an empty set.
const firstAnswerTimeout = 3 * time.Second

// ConsulUpstreams is a dynamic upstream source for reverse_proxy: the
// instances of a Consul service that are healthy, kept current by blocking
// queries, so that a change in Consul reaches traffic within milliseconds
// and without a config reload.
//
// Sources that watch the same thing share one watcher, across routes and
// across config reloads. When Consul is unreachable, the last instances it
// gave keep being served. Each instance's weight and metadata travel with
// the request for weight-aware selection policies.
type ConsulUpstreams struct {
	// Name of the Consul service. Required.
	Service string `json:"service,omitempty"`

	// Tags an instance must all carry to be used.
	Tags []string `json:"tags,omitempty"`

	// Consul filter expression instances must match, for example
	// `Service.Meta.version == "2"`. See Consul's filtering docs for the
	// fields of /v1/health/service.
	Filter string `json:"filter,omitempty"`

	// Datacenters to take instances from, in failover order: the first one
	// with a healthy instance serves all traffic. Default: the datacenter of
	// the consul settings, else the agent's own.
	Datacenters []string `json:"datacenters,omitempty"`

	// Which instances are in rotation: "passing" (every check passes) or
	// "warning" (no check is critical; instances with warning checks get
	// their warning weight). Default: passing.
	Health string `json:"health,omitempty"`

	// Order instances by round-trip time from this node: "_agent" for the
	// local agent, or a node name. Default: Consul's order.
	Near string `json:"near,omitempty"`

	// Consistency of the queries: "stale" lets any Consul server answer, so
	// reads scale and survive the loss of the leader; "default" asks the
	// leader; "cached" answers from the local agent's cache, which keeps a
	// single watch on the servers however many watchers ask. Default: stale.
	Consistency string `json:"consistency,omitempty"`

	// How long a blocking query waits for a change before Consul answers
	// anyway. Default: 5m; at most 10m.
	Wait caddy.Duration `json:"wait,omitempty"`

	// Percentage of healthy instances below which all instances not in
	// maintenance are used, healthy or not, as Envoy's panic mode does: when
	// most of a service fails its checks, the checks are more likely wrong
	// than the service. 0 turns it off. Default: 0.
	PanicThreshold int `json:"panic_threshold,omitempty"`

	// Connection settings for this source, overriding the mesh app's
	// field by field.
	Consul *ConsulConfig `json:"consul,omitempty"`

	watchers  []*watcher // one per datacenter, in failover order
	keys      []watchKey // what to give back to the pool at cleanup
	noAnswer  error
	panicking atomic.Bool
	logger    *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (*ConsulUpstreams) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.upstreams.consul",
		New: func() caddy.Module { return new(ConsulUpstreams) },
	}
}

// Provision validates the config and takes a shared watcher for each
// datacenter, waiting briefly for Consul's first answer.
func (cu *ConsulUpstreams) Provision(ctx caddy.Context) error {
	cu.logger = ctx.Logger()
	if err := cu.validate(); err != nil {
		return err
	}
	if err := metrics.register(ctx); err != nil {
		return err
	}
	cu.setDefaults()
	appConsul, err := appConsulConfig(ctx)
	if err != nil {
		return err
	}
	conn, err := resolveConnection(cu.Consul, appConsul)
	if err != nil {
		return err
	}
	if err := useEvents(ctx); err != nil {
		return err
	}
	filter := cu.fullFilter()
	datacenters := cu.Datacenters
	if len(datacenters) == 0 {
		datacenters = []string{conn.datacenter}
	}
	for _, dc := range datacenters {
		key := watchKey{
			endpoint: conn.endpoint, service: cu.Service, datacenter: dc, filter: filter,
			health: cu.Health, near: cu.Near, consistency: cu.Consistency, wait: time.Duration(cu.Wait),
		}
		if err := cu.take(key, conn); err != nil {
			return err
		}
	}
	cu.noAnswer = fmt.Errorf("consul has not answered yet for service %q", cu.Service)
	cu.awaitFirstAnswers(ctx)
	return nil
}

// take gets the shared watcher for key, starting it if it is the first.
func (cu *ConsulUpstreams) take(key watchKey, conn connection) error {
	value, _, err := watchers.LoadOrNew(key, func() (caddy.Destructor, error) {
		w, err := newWatcher(key, conn)
		if err != nil {
			return nil, err
		}
		w.tags, w.userFilter = cu.Tags, cu.Filter
		w.start()
		return w, nil
	})
	if err != nil {
		return err
	}
	cu.keys = append(cu.keys, key)
	cu.watchers = append(cu.watchers, value.(*watcher))
	return nil
}

// awaitFirstAnswers waits until every watcher has had its first try at
// Consul, for at most firstAnswerTimeout. A failed try does not hold
// provisioning up: Consul is down, and GetUpstreams errors (so Caddy uses
// any static upstreams) until it answers.
func (cu *ConsulUpstreams) awaitFirstAnswers(ctx caddy.Context) {
	deadline := time.NewTimer(firstAnswerTimeout)
	defer deadline.Stop()
	for _, w := range cu.watchers {
		select {
		case <-w.tried:
		case <-deadline.C:
			cu.logger.Warn("consul has not answered yet; starting without instances",
				zap.String("service", cu.Service), zap.Duration("waited", firstAnswerTimeout))
			return
		case <-ctx.Done():
			return
		}
	}
}

// Cleanup lets go of the watchers; the last user of one stops it. A
// stopped watcher keeps its last answer: Caddy cleans up an old config
// while its server still finishes requests, and those keep being served.
func (cu *ConsulUpstreams) Cleanup() error {
	var errs []error
	for _, key := range cu.keys {
		if _, err := watchers.Delete(key); err != nil {
			errs = append(errs, err)
		}
	}
	cu.keys = nil
	return errors.Join(errs...)
}

// GetUpstreams returns the instances to use for this attempt of r, as fresh
// Upstream values. It does no I/O and takes no lock: the watchers keep the
// answers current. It records the snapshot behind the upstreams in r for
// weight-aware policies.
func (cu *ConsulUpstreams) GetUpstreams(r *http.Request) ([]*reverseproxy.Upstream, error) {
	snap := cu.choose()
	if snap == nil {
		pool.Attach(r, nil)
		return nil, cu.noAnswer
	}
	pool.Attach(r, snap)
	return newUpstreams(snap.Instances), nil
}

// choose picks the snapshot to serve: that of the first datacenter with a
// healthy instance, or, when none has one, of the first where panic mode
// finds instances; nil when no datacenter has answered yet.
func (cu *ConsulUpstreams) choose() *pool.Snapshot {
	var first *answer
	for _, w := range cu.watchers {
		a := w.current.Load()
		if a == nil {
			continue
		}
		if first == nil {
			first = a
		}
		if len(a.healthy.Instances) > 0 {
			return cu.servable(a)
		}
	}
	for _, w := range cu.watchers {
		if a := w.current.Load(); a != nil && cu.panics(a) {
			return cu.servable(a)
		}
	}
	if first == nil {
		return nil
	}
	return first.healthy
}

// servable returns a's healthy instances, or all of them in panic mode.
func (cu *ConsulUpstreams) servable(a *answer) *pool.Snapshot {
	panicking := cu.panics(a)
	if cu.panicking.Load() != panicking && cu.panicking.CompareAndSwap(!panicking, panicking) {
		cu.logPanic(a, panicking)
	}
	if panicking {
		return a.all
	}
	return a.healthy
}

// panics reports whether fewer than PanicThreshold percent of a's
// instances are healthy.
func (cu *ConsulUpstreams) panics(a *answer) bool {
	return len(a.healthy.Instances)*100 < cu.PanicThreshold*len(a.all.Instances)
}

func (cu *ConsulUpstreams) logPanic(a *answer, panicking bool) {
	fields := []zap.Field{
		zap.String("service", cu.Service),
		zap.Int("healthy", len(a.healthy.Instances)),
		zap.Int("total", len(a.all.Instances)),
		zap.Int("panic_threshold", cu.PanicThreshold),
	}
	if panicking {
		cu.logger.Warn("too few healthy instances: panic mode, sending traffic to all instances", fields...)
		return
	}
	cu.logger.Info("enough healthy instances again: panic mode over", fields...)
}

// newUpstreams returns fresh Upstream values for instances, in two
// allocations: Caddy writes into each Upstream during an attempt, so they
// cannot be shared between requests.
func newUpstreams(instances []pool.Instance) []*reverseproxy.Upstream {
	values := make([]reverseproxy.Upstream, len(instances))
	list := make([]*reverseproxy.Upstream, len(instances))
	for i := range instances {
		values[i].Dial = instances[i].Dial
		list[i] = &values[i]
	}
	return list
}

// validate rejects bad values, naming the field and the value.
func (cu *ConsulUpstreams) validate() error {
	switch {
	case strings.TrimSpace(cu.Service) == "":
		return errors.New("consul upstreams: service is required")
	case cu.Health != "" && cu.Health != healthPassing && cu.Health != healthWarning:
		return fmt.Errorf("consul upstreams: health %q: must be passing or warning", cu.Health)
	case cu.Consistency != "" && cu.Consistency != consistencyDefault &&
		cu.Consistency != consistencyStale && cu.Consistency != consistencyCached:
		return fmt.Errorf("consul upstreams: consistency %q: must be default, stale or cached", cu.Consistency)
	case cu.Wait < 0:
		return fmt.Errorf("consul upstreams: wait %s: must not be negative", time.Duration(cu.Wait))
	case time.Duration(cu.Wait) > maxWait:
		return fmt.Errorf("consul upstreams: wait %s: must be at most %s", time.Duration(cu.Wait), maxWait)
	case cu.PanicThreshold < 0 || cu.PanicThreshold > 100:
		return fmt.Errorf("consul upstreams: panic_threshold %d: must be between 0 and 100", cu.PanicThreshold)
	}
	for _, tag := range cu.Tags {
		if tag == "" || strings.Contains(tag, "`") {
			return fmt.Errorf("consul upstreams: tag %q: must be non-empty and free of backticks", tag)
		}
	}
	if cu.Filter != "" {
		if _, err := bexpr.CreateEvaluator(cu.Filter, nil); err != nil {
			return fmt.Errorf("consul upstreams: filter %q: %v", cu.Filter, err)
		}
	}
	return nil
}

func (cu *ConsulUpstreams) setDefaults() {
	if cu.Health == "" {
		cu.Health = healthPassing
	}
	if cu.Consistency == "" {
		cu.Consistency = consistencyStale
	}
	if cu.Wait == 0 {
		cu.Wait = caddy.Duration(defaultWait)
	}
}

// fullFilter is the Consul filter for Tags and Filter together. Tags are
// quoted with backticks, which Consul's filter language reads verbatim.
func (cu *ConsulUpstreams) fullFilter() string {
	clauses := make([]string, 0, len(cu.Tags)+1)
	for _, tag := range cu.Tags {
		clauses = append(clauses, "`"+tag+"` in Service.Tags")
	}
	if cu.Filter != "" {
		if len(clauses) == 0 {
			return cu.Filter
		}
		clauses = append(clauses, "("+cu.Filter+")")
	}
	return strings.Join(clauses, " and ")
}

// Interface guards
var (
	_ caddy.Provisioner           = (*ConsulUpstreams)(nil)
	_ caddy.CleanerUpper          = (*ConsulUpstreams)(nil)
	_ reverseproxy.UpstreamSource = (*ConsulUpstreams)(nil)
	_ caddy.Destructor            = (*watcher)(nil)
)
