package discovery

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddymesh/caddymesh/internal/consul"
)

// registrations reports, at each scrape, the instances this Caddy keeps
// registered in Consul. The watches' metrics are internal/consul's. Labels
// name services and states only, so their number stays bounded.
var registrations = registrationState{
	desc: prometheus.NewDesc(consul.Namespace+"_"+consul.Subsystem+"_registrations",
		"Instances this Caddy keeps registered in Consul, by service and state (registering, registered, agent_only, failing).",
		[]string{"service", "state"}, nil),
}

// registerMetrics adds the mesh's metrics to the registry of ctx's config:
// the watches' and the registrations'.
func registerMetrics(ctx caddy.Context) error {
	return consul.RegisterMetrics(ctx, registrations)
}

type registrationState struct{ desc *prometheus.Desc }

// Describe implements prometheus.Collector.
func (c registrationState) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect implements prometheus.Collector.
func (c registrationState) Collect(ch chan<- prometheus.Metric) {
	type serviceState struct{ service, state string }
	registered := make(map[serviceState]int)
	for _, r := range registrationViews() {
		registered[serviceState{r.Name, r.State}]++
	}
	for k, n := range registered {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), k.service, k.state)
	}
}
