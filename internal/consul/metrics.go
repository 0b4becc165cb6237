package consul

import (
	"errors"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
)

// Namespace and Subsystem of every caddymesh metric: caddy_mesh_*.
const (
	// Namespace is the first part of every metric name.
	Namespace = "caddy"
	// Subsystem is the second part of every metric name.
	Subsystem = "mesh"
)

// metrics are the watches' Prometheus metrics, registered in Caddy's
// registry (so Caddy's metrics endpoint serves them). Labels name services
// and states only, never instance addresses, so their number stays bounded.
var metrics = newWatchMetrics()

type watchMetrics struct {
	queries  *prometheus.CounterVec
	duration prometheus.Histogram
	updates  *prometheus.CounterVec
	holds    *prometheus.CounterVec
	state    healthState
}

func newWatchMetrics() *watchMetrics {
	return &watchMetrics{
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: Subsystem, Name: "consul_requests_total",
			Help: "Queries to Consul, by watched service and result (ok, error).",
		}, []string{"service", "result"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: Namespace, Subsystem: Subsystem, Name: "consul_request_duration_seconds",
			Help:    "Duration of queries to Consul; blocking queries last up to their wait.",
			Buckets: []float64{.001, .005, .025, .1, .5, 1, 5, 30, 60, 300, 600},
		}),
		updates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: Subsystem, Name: "snapshot_updates_total",
			Help: "Changes of a watched service's instances.",
		}, []string{"service"}),
		holds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: Subsystem, Name: "holds_total",
			Help: "Times a watch kept serving its last healthy instances when Consul's answer dropped them all at once (hold_last).",
		}, []string{"service"}),
		state: newHealthState(Namespace + "_" + Subsystem),
	}
}

// RegisterMetrics adds the watch metrics, and collectors, to the registry
// of ctx's config. Caddy makes a registry per config, while the metrics
// outlive configs.
func RegisterMetrics(ctx caddy.Context, collectors ...prometheus.Collector) error {
	registry := ctx.GetMetricsRegistry()
	if registry == nil {
		return nil
	}
	all := append([]prometheus.Collector{metrics.queries, metrics.duration, metrics.updates, metrics.holds, metrics.state}, collectors...)
	for _, c := range all {
		if err := registry.Register(c); err != nil && !errors.As(err, new(prometheus.AlreadyRegisteredError)) {
			return err
		}
	}
	return nil
}

func (m *watchMetrics) countQuery(service string, d time.Duration, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.queries.WithLabelValues(service, result).Inc()
	m.duration.Observe(d.Seconds())
}

func (m *watchMetrics) countUpdate(service string) {
	m.updates.WithLabelValues(service).Inc()
}

func (m *watchMetrics) countHold(service string) {
	m.holds.WithLabelValues(service).Inc()
}

// healthState reports, at each scrape, the current state of the health
// watches.
type healthState struct {
	instances, age, watchers *prometheus.Desc
}

func newHealthState(prefix string) healthState {
	return healthState{
		instances: prometheus.NewDesc(prefix+"_instances",
			"Instances of watched services by state (healthy, warning, critical, maintenance), summed over a service's watches.",
			[]string{"service", "state"}, nil),
		age: prometheus.NewDesc(prefix+"_snapshot_age_seconds",
			"How old a watched service's instances may be: the time since Consul last confirmed them (an answer, or a blocking query in flight while the datacenter has a leader), plus the answering server's lag behind its leader; the stalest of a service's watches.",
			[]string{"service"}, nil),
		watchers: prometheus.NewDesc(prefix+"_watchers",
			"Consul watches running.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c healthState) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.instances
	ch <- c.age
	ch <- c.watchers
}

// Collect implements prometheus.Collector.
func (c healthState) Collect(ch chan<- prometheus.Metric) {
	type serviceState struct{ service, state string }
	instances := make(map[serviceState]int)
	ages := make(map[string]time.Duration)
	count := 0
	now := time.Now()
	HealthWatches.Range(func(_ HealthKey, w *HealthWatch, _ int) {
		count++
		service := w.Key.Service
		ages[service] = max(ages[service], w.Staleness(now))
		a := w.Current()
		if a == nil {
			return
		}
		for _, inst := range a.All.Instances {
			state := inst.Health
			if state == api.HealthPassing {
				state = "healthy"
			}
			instances[serviceState{service, state}]++
		}
		instances[serviceState{service, "maintenance"}] += a.Maintenance
	})
	for k, n := range instances {
		ch <- prometheus.MustNewConstMetric(c.instances, prometheus.GaugeValue, float64(n), k.service, k.state)
	}
	for service, age := range ages {
		ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, age.Seconds(), service)
	}
	ch <- prometheus.MustNewConstMetric(c.watchers, prometheus.GaugeValue, float64(count))
}
