package connect

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddymesh/caddymesh/internal/consul"
)

// metrics are Connect's Prometheus metrics, registered in Caddy's registry
// of each config (so Caddy's metrics endpoint serves them) and read from
// the watches at each scrape, so that a stopped watch leaves nothing.
var metrics = leafExpiryCollector{
	desc: prometheus.NewDesc("caddy_mesh_connect_leaf_expiry_seconds",
		"When the Connect leaf certificate held for a service expires, in seconds since the Unix epoch.",
		[]string{"service"}, nil),
}

// leafExpiryCollector reports caddy_mesh_connect_leaf_expiry_seconds.
type leafExpiryCollector struct{ desc *prometheus.Desc }

// Describe sends the metric's description.
func (c leafExpiryCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect sends, for each service with a leaf, the earliest expiry among
// its watches (one per Consul connection).
func (c leafExpiryCollector) Collect(ch chan<- prometheus.Metric) {
	earliest := make(map[string]float64)
	for _, w := range allLeafWatches() {
		l := w.current.Load()
		if l == nil {
			continue
		}
		expiry := float64(l.validBefore.Unix())
		if known, ok := earliest[w.key.Service]; !ok || expiry < known {
			earliest[w.key.Service] = expiry
		}
	}
	for service, expiry := range earliest {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, expiry, service)
	}
}

// allLeafWatches returns the running leaf watches.
func allLeafWatches() []*leafWatch {
	var watches []*leafWatch
	leafWatches.Range(func(_ leafKey, w *leafWatch, _ int) { watches = append(watches, w) })
	return watches
}

// allRootsWatches returns the running roots watches.
func allRootsWatches() []*rootsWatch {
	var watches []*rootsWatch
	rootsWatches.Range(func(_ consul.Endpoint, w *rootsWatch, _ int) { watches = append(watches, w) })
	return watches
}
