package middleware

import (
	"errors"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
)

// breakerStates reports, at each scrape, the state of every circuit of the
// running breakers: caddy_mesh_breaker_state{key}, 0 closed, 1 open, 2
// half-open. Circuits per breaker are capped, so the series are bounded.
type breakerStates struct{}

var breakerStateDesc = prometheus.NewDesc("caddy_mesh_breaker_state",
	"State of each circuit of the mesh_breaker handlers: 0 closed, 1 open, 2 half-open (the worst, for a key several breakers share).",
	[]string{"key"}, nil)

// Describe implements prometheus.Collector.
func (breakerStates) Describe(ch chan<- *prometheus.Desc) { ch <- breakerStateDesc }

// Collect implements prometheus.Collector.
func (breakerStates) Collect(ch chan<- prometheus.Metric) {
	for key, state := range circuitStates() {
		ch <- prometheus.MustNewConstMetric(breakerStateDesc, prometheus.GaugeValue, float64(state), key)
	}
}

// registerMetrics adds the middleware's metrics to the registry of ctx's
// config: Caddy makes a registry per config.
func registerMetrics(ctx caddy.Context) error {
	registry := ctx.GetMetricsRegistry()
	if registry == nil {
		return nil
	}
	if err := registry.Register(breakerStates{}); err != nil && !errors.As(err, new(prometheus.AlreadyRegisteredError)) {
		return err
	}
	return nil
}
