package discovery

import (
	"cmp"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-bexpr"
	"go.uber.org/zap"

	"github.com/caddymesh/caddymesh/internal/bounds"
	"github.com/caddymesh/caddymesh/internal/consul"
	"github.com/caddymesh/caddymesh/internal/pool"
	"github.com/caddymesh/caddymesh/internal/reqkey"
	"github.com/caddymesh/caddymesh/internal/svcname"
	"github.com/caddymesh/caddymesh/internal/validate"
)

func init() {
	caddy.RegisterModule(new(ConsulUpstreams))
}

// Bounds of a blocking query's wait.
const (
	minWait = time.Second
	maxWait = 10 * time.Minute
)

// Bounds of the options of a source whose service name has placeholders.
const (
	maxMaxServices    = 65536
	minIdleTimeout    = 100 * time.Millisecond
	maxIdleTimeout    = 24 * time.Hour
	minResolveTimeout = time.Millisecond
	maxResolveTimeout = time.Minute
)

// maxHoldLast bounds hold_last.
const maxHoldLast = 5 * time.Minute

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
	// Name of the Consul service. Required. It may hold placeholders, such
	// as {http.request.uri.path.0} or {http.request.host.labels.2}, to name
	// the service per request: then each service is watched from the first
	// request for it (see max_services, idle_timeout, resolve_timeout), and
	// a name that breaks the service-name rule (letters, digits, -, _ and .,
	// no empty label between dots, at most 256 bytes) gets no upstreams; a
	// fixed name that breaks it is refused. Put mesh_service in front to say which names may be
	// reached.
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
	// anyway, from 1s to 10m. Default: 5m.
	Wait caddy.Duration `json:"wait,omitempty"`

	// Percentage of healthy instances below which all instances not in
	// maintenance are used, healthy or not, as Envoy's panic mode does: when
	// most of a service fails its checks, the checks are more likely wrong
	// than the service. 0 turns it off. Default: 0.
	PanicThreshold int `json:"panic_threshold,omitempty"`

	// How long to keep serving the last healthy instances when Consul's
	// answer drops them all at once, as a client agent's graceful leave
	// (a rolling upgrade of Consul agents) does until its services register
	// again; a real scale to zero takes effect after it. 0 turns it off.
	// Default: 10s; at most 5m.
	HoldLast *caddy.Duration `json:"hold_last,omitempty"`

	// For a service name with placeholders: how many services it watches
	// at most at once, from 1 to 65536; requests for others get no
	// upstreams until one is let go. Default: 256.
	MaxServices int `json:"max_services,omitempty"`

	// For a service name with placeholders: how long a service is watched
	// without a request for it before it is let go, from 100ms to 24h.
	// Default: 10m.
	IdleTimeout caddy.Duration `json:"idle_timeout,omitempty"`

	// For a service name with placeholders: how long the first request for
	// a service waits for Consul's first answer about it, from 1ms to 1m.
	// Default: 3s.
	ResolveTimeout caddy.Duration `json:"resolve_timeout,omitempty"`

	// Take the instances from Consul's Connect catalog of the service
	// (/v1/health/connect/<service>): its sidecar proxies (Envoy, consul
	// connect proxy) and its Connect-native instances, each with the
	// service identity it presents, which `transport connect` verifies.
	// Default: the service's own instances (/v1/health/service/<service>).
	Connect bool `json:"connect,omitempty"`

	// Connection settings for this source, overriding the mesh app's
	// field by field.
	Consul *ConsulConfig `json:"consul,omitempty"`

	// Follow the service's discovery chain, as Consul compiles it from its
	// service-router, service-splitter and service-resolver config entries
	// (in the first datacenter), for each request: the router's routes, the
	// splitter's weights, the resolver's subsets, redirect and failover
	// targets, with the routes' PrefixRewrite and request header actions.
	// Tags and filter apply to every target; what Caddy cannot honour per
	// request is listed by GET /mesh/chains/<service> under not_honoured.
	// The service name must be fixed. Default: off.
	Chain bool `json:"chain,omitempty"`

	conn        consul.Connection
	datacenters []string
	filter      string
	static      *serviceWatch  // the service, when its name is fixed
	chain       *chainFollower // the service's discovery chain, with chain
	lazy        *lazyServices  // the services, when the name has placeholders
	serviceName reqkey.Func    // evaluates a name with placeholders
	handout     *pool.Handout  // hands out the whole pool, or the policy's candidates
	logger      *zap.Logger
	validated   validate.Once // Validate's answer, for Caddy's call after Provision
}

// CaddyModule returns the Caddy module information.
func (*ConsulUpstreams) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.upstreams.consul",
		New: func() caddy.Module { return new(ConsulUpstreams) },
	}
}

// Provision validates the config and takes a shared watcher for each
// datacenter, waiting briefly for Consul's first answer; or, for a service
// name with placeholders, gets ready to watch services as requests come.
func (cu *ConsulUpstreams) Provision(ctx caddy.Context) error {
	cu.logger = ctx.Logger()
	if err := cu.Validate(); err != nil {
		return err
	}
	cu.setDefaults()
	var err error
	if cu.conn, err = consul.Provision(ctx, cu.Consul); err != nil {
		return err
	}
	cu.filter = cu.fullFilter()
	cu.handout = pool.NewHandout(pool.EnclosingProxy(ctx), cu.logger)
	cu.datacenters = cu.Datacenters
	if len(cu.datacenters) == 0 {
		cu.datacenters = []string{cu.conn.Datacenter}
	}
	if cu.Chain {
		return cu.provisionChain(ctx)
	}
	if reqkey.HasPlaceholders(cu.Service) {
		cu.serviceName = reqkey.Compile(cu.Service)
		cu.lazy = newLazyServices(ctx, cu)
		return nil
	}
	if cu.static, err = cu.watch(cu.Service); err != nil {
		return err
	}
	cu.static.awaitFirstAnswers(ctx, firstAnswerTimeout)
	return nil
}

// watch takes the shared watcher of service in each of the source's
// datacenters, starting those nobody runs yet.
func (cu *ConsulUpstreams) watch(service string) (*serviceWatch, error) {
	sw := &serviceWatch{service: service, panicThreshold: cu.PanicThreshold, logger: cu.logger}
	for _, dc := range cu.datacenters {
		key := consul.HealthKey{
			Endpoint: cu.conn.Endpoint, Service: service, Datacenter: dc, Filter: cu.filter,
			Health: cu.Health, Near: cu.Near, Consistency: cu.Consistency, Wait: time.Duration(cu.Wait),
			HoldLast: time.Duration(*cu.HoldLast), Connect: cu.Connect,
		}
		w, err := takeHealthWatch(key, cu.conn, cu.Tags, cu.Filter)
		if err != nil {
			sw.release()
			return nil, err
		}
		sw.keys = append(sw.keys, key)
		sw.watchers = append(sw.watchers, w)
	}
	return sw, nil
}

// takeHealthWatch takes the shared health watch of key, starting it if
// nobody runs it yet; tags and userFilter are the configured ones that
// key's filter combines, for the admin API.
func takeHealthWatch(key consul.HealthKey, conn consul.Connection, tags []string, userFilter string) (*consul.HealthWatch, error) {
	return consul.HealthWatches.Take(key, func() (*consul.HealthWatch, error) {
		w, err := consul.NewHealthWatch(key, conn, consul.PollerOptions{})
		if err != nil {
			return nil, err
		}
		w.Tags, w.UserFilter = tags, userFilter
		return w, w.Start()
	})
}

// Cleanup lets go of the watchers; the last user of one stops it. A
// stopped watcher keeps its last answer: Caddy cleans up an old config
// while its server still finishes requests, and those keep being served.
func (cu *ConsulUpstreams) Cleanup() error {
	if cu.lazy != nil {
		return cu.lazy.releaseAll()
	}
	if cu.chain != nil {
		cu.chain.release()
	}
	if cu.static != nil {
		cu.static.release()
	}
	return nil
}

// GetUpstreams returns the instances to use for this attempt of r, as fresh
// Upstream values. It does no I/O and takes no lock: the watchers keep the
// answers current (but the first request for a service named by
// placeholders waits for its first answer). It records the snapshot behind
// the upstreams in r for weight-aware policies. With a policy that can
// preselect, such as smooth_weighted, consistent_hash or least_latency, and
// a large pool, the upstreams are the few candidates the policy names for r
// (see pool.Handout).
func (cu *ConsulUpstreams) GetUpstreams(r *http.Request) ([]*reverseproxy.Upstream, error) {
	if cu.chain != nil {
		return cu.chain.upstreams(r, cu.handout)
	}
	sw := cu.static
	if cu.lazy != nil {
		if sw = cu.lazy.get(r, cu.serviceName(r)); sw == nil {
			pool.Attach(r, nil)
			return nil, nil // not a service this source may watch: no upstreams
		}
	}
	snap := sw.choose()
	if snap == nil {
		pool.Attach(r, nil)
		return nil, sw.noAnswer()
	}
	return cu.handout.Upstreams(r, snap), nil
}

// ResetCache is called by Caddy before each retry of r: the retry gets the
// whole pool, not only the candidates that may all have failed.
func (cu *ConsulUpstreams) ResetCache(r *http.Request) error {
	cu.handout.Retry(r)
	return nil
}

// Validate rejects bad values, naming the field and the value.
// Provision calls it before acting on them; its checks run once.
func (cu *ConsulUpstreams) Validate() error { return cu.validated.Do(cu.check) }

// check makes Validate's checks.
func (cu *ConsulUpstreams) check() error {
	switch {
	case strings.TrimSpace(cu.Service) == "":
		return errors.New("consul upstreams: service is required")
	case !reqkey.HasPlaceholders(cu.Service) && !svcname.Valid(cu.Service):
		return fmt.Errorf("consul upstreams: service %q: %s", cu.Service, svcname.Rule)
	case cu.Health != "" && cu.Health != consul.HealthPassing && cu.Health != consul.HealthWarning:
		return fmt.Errorf("consul upstreams: health %q: must be passing or warning", cu.Health)
	case cu.Consistency != "" && cu.Consistency != consul.ConsistencyDefault &&
		cu.Consistency != consul.ConsistencyStale && cu.Consistency != consul.ConsistencyCached:
		return fmt.Errorf("consul upstreams: consistency %q: must be default, stale or cached", cu.Consistency)
	case cu.Chain && reqkey.HasPlaceholders(cu.Service):
		return fmt.Errorf("consul upstreams: chain needs a fixed service name, not %q", cu.Service)
	case !reqkey.HasPlaceholders(cu.Service) && (cu.MaxServices != 0 || cu.IdleTimeout != 0 || cu.ResolveTimeout != 0):
		return fmt.Errorf("consul upstreams: max_services, idle_timeout and resolve_timeout are for a service name with placeholders, not %q", cu.Service)
	}
	if err := cmp.Or(
		bounds.DurationOrZero("wait", cu.Wait, minWait, maxWait),
		bounds.Check("panic_threshold", cu.PanicThreshold, 0, 100),
		bounds.CheckOrZero("max_services", cu.MaxServices, 1, maxMaxServices),
		bounds.DurationOrZero("idle_timeout", cu.IdleTimeout, minIdleTimeout, maxIdleTimeout),
		bounds.DurationOrZero("resolve_timeout", cu.ResolveTimeout, minResolveTimeout, maxResolveTimeout),
		holdLastInBounds(cu.HoldLast),
	); err != nil {
		return fmt.Errorf("consul upstreams: %w", err)
	}
	for _, tag := range cu.Tags {
		if tag == "" || strings.Contains(tag, "`") {
			return fmt.Errorf("consul upstreams: tag %q: must be non-empty and free of backticks", tag)
		}
	}
	if cu.Filter != "" {
		// Consul checks a filter against the type it filters, with this
		// very library and version.
		if _, err := bexpr.CreateEvaluatorForType(cu.Filter, nil, (*api.ServiceEntry)(nil)); err != nil {
			return fmt.Errorf("consul upstreams: filter %q: %v", cu.Filter, err)
		}
	}
	return nil
}

// holdLastInBounds checks hold_last, whose 0 turns holding off rather than
// meaning the default.
func holdLastInBounds(holdLast *caddy.Duration) error {
	if holdLast == nil {
		return nil
	}
	return bounds.Duration("hold_last", *holdLast, 0, maxHoldLast)
}

func (cu *ConsulUpstreams) setDefaults() {
	if cu.Health == "" {
		cu.Health = consul.HealthPassing
	}
	if cu.Consistency == "" {
		cu.Consistency = consul.ConsistencyStale
	}
	if cu.Wait == 0 {
		cu.Wait = caddy.Duration(consul.DefaultWait)
	}
	if cu.HoldLast == nil {
		cu.HoldLast = new(caddy.Duration(consul.DefaultHoldLast))
	}
	cu.MaxServices = cmp.Or(cu.MaxServices, defaultMaxServices)
	cu.IdleTimeout = cmp.Or(cu.IdleTimeout, caddy.Duration(defaultIdleTimeout))
	cu.ResolveTimeout = cmp.Or(cu.ResolveTimeout, caddy.Duration(firstAnswerTimeout))
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
	_ caddy.Provisioner                  = (*ConsulUpstreams)(nil)
	_ caddy.Validator                    = (*ConsulUpstreams)(nil)
	_ caddy.CleanerUpper                 = (*ConsulUpstreams)(nil)
	_ reverseproxy.UpstreamSource        = (*ConsulUpstreams)(nil)
	_ reverseproxy.CachingUpstreamSource = (*ConsulUpstreams)(nil)
)
