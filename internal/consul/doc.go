// Package consul is the Consul layer every caddymesh module shares: the
// connection settings and their precedence (Config, Resolve, Provision),
// the poller of blocking queries (Poller, Querier: index rules, backoff,
// rate limit, the distrust after an outage, an outage logged once), one
// registry of shared watches (Registry: keyed, ref-counted, surviving
// reloads), the watches themselves (HealthWatch, CatalogWatch), their
// metrics and the events they emit.
//
// A new watch (Connect leaf and roots, discovery chains, KV) is added here
// as a Querier over a Poller, held in a Registry, never copied.
package consul
