package discovery

import (
	"errors"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the mesh's Prometheus metrics, registered in Caddy's registry
// (so Caddy's metrics endpoint serves them). Labels name services and
// states only, never instance addresses, so their number stays bounded.
var metrics = newMeshMetrics()

type meshMetrics struct {
	queries  *prometheus.CounterVec
	duration prometheus.Histogram
	updates  *prometheus.CounterVec
	holds    *prometheus.CounterVec
	// chainRequests counts attempts by the chain target they went to.
	chainRequests *prometheus.CounterVec
	state         stateCollector
}

func newMeshMetrics() *meshMetrics {
	const namespace, subsystem = "caddy", "mesh"
	return &meshMetrics{
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: subsystem, Name: "consul_requests_total",
			Help: "Queries to Consul, by watched service and result (ok, error).",
		}, []string{"service", "result"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Subsystem: subsystem, Name: "consul_request_duration_seconds",
			Help:    "Duration of queries to Consul; blocking queries last up to their wait.",
			Buckets: []float64{.001, .005, .025, .1, .5, 1, 5, 30, 60, 300, 600},
		}),
		updates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: subsystem, Name: "snapshot_updates_total",
			Help: "Changes of a watched service's instances.",
		}, []string{"service"}),
		holds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: subsystem, Name: "holds_total",
			Help: "Times a watch kept serving its last healthy instances when Consul's answer dropped them all at once (hold_last).",
		}, []string{"service"}),
		chainRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: subsystem, Name: "chain_requests_total",
			Help: "Attempts (retries included) sent by a discovery chain, by service and by the chain target chosen (a target ID of the chain, such as v2.web.default.default.dc1).",
		}, []string{"service", "target"}),
		state: newStateCollector(namespace + "_" + subsystem),
	}
}

// register adds the metrics to the registry of ctx's config. Caddy makes a
// registry per config, while the metrics outlive configs.
func (m *meshMetrics) register(ctx caddy.Context) error {
	registry := ctx.GetMetricsRegistry()
	if registry == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{m.queries, m.duration, m.updates, m.holds, m.chainRequests, m.state} {
		if err := registry.Register(c); err != nil && !errors.As(err, new(prometheus.AlreadyRegisteredError)) {
			return err
		}
	}
	return nil
}

func (m *meshMetrics) countQuery(service string, d time.Duration, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.queries.WithLabelValues(service, result).Inc()
	m.duration.Observe(d.Seconds())
}

func (m *meshMetrics) countUpdate(service string) {
	m.updates.WithLabelValues(service).Inc()
}

func (m *meshMetrics) countHold(service string) {
	m.holds.WithLabelValues(service).Inc()
}

// stateCollector reports, at each scrape, the current state of watches
// and registrations.
type stateCollector struct {
	instances, age, watchers, registrations *prometheus.Desc
}

func newStateCollector(prefix string) stateCollector {
	return stateCollector{
		instances: prometheus.NewDesc(prefix+"_instances",
			"Instances of watched services by state (healthy, warning, critical, maintenance), summed over a service's watches.",
			[]string{"service", "state"}, nil),
		age: prometheus.NewDesc(prefix+"_snapshot_age_seconds",
			"How old a watched service's instances may be: the time since Consul last confirmed them (an answer, or a blocking query in flight while the datacenter has a leader), plus the answering server's lag behind its leader; the stalest of a service's watches.",
			[]string{"service"}, nil),
		watchers: prometheus.NewDesc(prefix+"_watchers",
			"Consul watches running.", nil, nil),
		registrations: prometheus.NewDesc(prefix+"_registrations",
			"Instances this Caddy keeps registered in Consul, by service and state (registering, registered, agent_only, failing).",
			[]string{"service", "state"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.instances
	ch <- c.age
	ch <- c.watchers
	ch <- c.registrations
}

// Collect implements prometheus.Collector.
func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	type serviceState struct{ service, state string }
	instances := make(map[serviceState]int)
	ages := make(map[string]time.Duration)
	count := 0
	now := time.Now()
	forEachWatcher(func(w *watcher, _ int) {
		count++
		service := w.key.service
		ages[service] = max(ages[service], w.status.Load().staleness(now, w.leaderState()))
		a := w.current.Load()
		if a == nil {
			return
		}
		for _, inst := range a.all.Instances {
			state := inst.Health
			if state == api.HealthPassing {
				state = "healthy"
			}
			instances[serviceState{service, state}]++
		}
		instances[serviceState{service, "maintenance"}] += a.maintenance
	})
	for k, n := range instances {
		ch <- prometheus.MustNewConstMetric(c.instances, prometheus.GaugeValue, float64(n), k.service, k.state)
	}
	for service, age := range ages {
		ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, age.Seconds(), service)
	}
	ch <- prometheus.MustNewConstMetric(c.watchers, prometheus.GaugeValue, float64(count))
	registered := make(map[serviceState]int)
	for _, r := range registrationViews() {
		registered[serviceState{r.Name, r.State}]++
	}
	for k, n := range registered {
		ch <- prometheus.MustNewConstMetric(c.registrations, prometheus.GaugeValue, float64(n), k.service, k.state)
	}
}
