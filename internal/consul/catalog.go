package discovery

import (
	"context"
	"maps"
	"slices"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/hashicorp/consul/api"
)

// catalogs holds one catalog watch per Consul endpoint, datacenter and
// filter, shared like the health watchers.
var catalogs = caddy.NewUsagePool()

// catalogKey is what makes two catalog watches differ.
type catalogKey struct {
	endpoint
	datacenter string
	filter     string
}

// catalogWatch keeps the names and tags of a datacenter's services
// current, with one blocking query on /v1/catalog/services: how gateways
// learn which services exist and which declare routes, without a query per
// service.
type catalogWatch struct {
	*poller[map[string][]string]
	key      catalogKey
	services atomic.Pointer[map[string][]string] // name: the union of its instances' tags
}

// takeCatalog returns the shared catalog watch of key, starting it if it
// is the first; releaseCatalog lets go of it.
func takeCatalog(key catalogKey, conn connection) (*catalogWatch, error) {
	value, _, err := catalogs.LoadOrNew(key, func() (caddy.Destructor, error) {
		p, err := newPoller[map[string][]string]("(catalog)", key.datacenter, conn)
		if err != nil {
			return nil, err
		}
		c := &catalogWatch{poller: p, key: key}
		p.query, p.apply = c.query, c.apply
		p.wait = func() time.Duration { return defaultWait }
		return c, p.start()
	})
	if err != nil {
		return nil, err
	}
	return value.(*catalogWatch), nil
}

func releaseCatalog(key catalogKey) error {
	_, err := catalogs.Delete(key)
	return err
}

// Destruct stops the watch. The usage pool calls it when the last user
// lets go.
func (c *catalogWatch) Destruct() error {
	c.stop()
	return nil
}

func (c *catalogWatch) query(_ context.Context, q *api.QueryOptions) (map[string][]string, *api.QueryMeta, error) {
	q.Datacenter, q.Filter, q.AllowStale = c.key.datacenter, c.key.filter, !c.asksLeader()
	return c.client.Catalog().Services(q)
}

// apply publishes the services, when they changed.
func (c *catalogWatch) apply(services map[string][]string) {
	if old := c.services.Load(); old != nil && maps.EqualFunc(*old, services, slices.Equal) {
		return
	}
	c.services.Store(&services)
	c.notify()
}

// Interface guards
var _ caddy.Destructor = (*catalogWatch)(nil)
