package consul

import (
	"maps"
	"slices"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
)

// Catalogs holds one catalog watch per Consul endpoint, datacenter and
// filter, shared like the health watches.
var Catalogs = NewRegistry[CatalogKey, *CatalogWatch]()

// CatalogKey is what makes two catalog watches differ.
type CatalogKey struct {
	Endpoint
	// Datacenter is the datacenter whose catalog is watched.
	Datacenter string
	// Filter is a Consul filter expression on the catalog's services.
	Filter string
}

// CatalogWatch keeps the names and tags of a datacenter's services
// current, with one blocking query on /v1/catalog/services: how gateways
// learn which services exist and which declare routes, without a query per
// service.
type CatalogWatch struct {
	*Poller[map[string][]string]
	// Key is what the watch watches.
	Key      CatalogKey
	services atomic.Pointer[map[string][]string] // name: the union of its instances' tags
}

// TakeCatalog returns the shared catalog watch of key over conn, starting
// it if it is the first; Catalogs.Release(key) lets go of it.
func TakeCatalog(key CatalogKey, conn Connection) (*CatalogWatch, error) {
	return Catalogs.Take(key, func() (*CatalogWatch, error) {
		c := &CatalogWatch{Key: key}
		p, err := NewPoller(conn, Querier[map[string][]string](c), PollerOptions{Subject: "(catalog)", Datacenter: key.Datacenter})
		if err != nil {
			return nil, err
		}
		c.Poller = p
		return c, p.Start()
	})
}

// Services are the services and the union of their instances' tags; nil
// until Consul first answers.
func (c *CatalogWatch) Services() *map[string][]string { return c.services.Load() }

// Query asks for the datacenter's services and their tags.
func (c *CatalogWatch) Query(client *api.Client, q *api.QueryOptions, leader bool) (map[string][]string, *api.QueryMeta, error) {
	q.Datacenter, q.Filter, q.AllowStale = c.Key.Datacenter, c.Key.Filter, !leader
	return client.Catalog().Services(q)
}

// Wait is the blocking queries' wait.
func (c *CatalogWatch) Wait() time.Duration { return DefaultWait }

// Apply publishes the services, when they changed.
func (c *CatalogWatch) Apply(services map[string][]string) {
	if old := c.services.Load(); old != nil && maps.EqualFunc(*old, services, slices.Equal) {
		return
	}
	c.services.Store(&services)
	c.Notify()
}

// Interface guards
var _ Watch = (*CatalogWatch)(nil)
