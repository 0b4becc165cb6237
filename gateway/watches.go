package gateway

import (
	"fmt"
	"slices"
	"strings"

	"go.uber.org/zap"

	"github.com/caddymesh/caddymesh/internal/consul"
	"github.com/caddymesh/caddymesh/internal/svcname"
)

// watchCatalogs takes the catalog watches: names and tags, and, with
// meta_prefix, the services whose meta declares routes.
func (rt *Router) watchCatalogs(conn consul.Connection) error {
	keys := []consul.CatalogKey{{Endpoint: conn.Endpoint, Datacenter: conn.Datacenter}}
	if rt.MetaPrefix != "" {
		keys = append(keys, consul.CatalogKey{Endpoint: conn.Endpoint, Datacenter: conn.Datacenter, Filter: rt.metaFilter()})
	}
	for _, key := range keys {
		c, err := consul.TakeCatalog(key, conn)
		if err != nil {
			return err
		}
		c.Subscribe(rt.wake)
		rt.catalogs = append(rt.catalogs, c)
	}
	return nil
}

// metaFilter selects the services with a route in their meta.
func (rt *Router) metaFilter() string {
	clauses := []string{fmt.Sprintf("%q in ServiceMeta", rt.MetaPrefix)}
	for i := 1; i < maxMetaRoutes; i++ {
		clauses = append(clauses, fmt.Sprintf("%q in ServiceMeta", fmt.Sprintf("%s-%d", rt.MetaPrefix, i)))
	}
	return strings.Join(clauses, " or ")
}

// routedServices are the services of the catalog that declare routes,
// among those whose names follow the service-name rule.
func (rt *Router) routedServices() map[string]bool {
	routed := make(map[string]bool)
	for i, c := range rt.catalogs {
		services := c.Services()
		if services == nil {
			continue
		}
		for name, tags := range *services {
			byMeta := i > 0 // the second catalog holds the services with meta routes
			byTag := slices.ContainsFunc(tags, rt.isRouteTag)
			if (byMeta || byTag) && (rt.RequireTag == "" || slices.Contains(tags, rt.RequireTag)) && svcname.Valid(name) {
				routed[name] = true
			}
		}
	}
	return routed
}

func (rt *Router) isRouteTag(tag string) bool {
	return strings.HasPrefix(strings.TrimSpace(tag), rt.TagPrefix)
}

// syncWatches watches the routed services, and only those.
func (rt *Router) syncWatches(routed map[string]bool) {
	for name := range rt.watches {
		if !routed[name] {
			rt.unwatch(name)
		}
	}
	for name := range routed {
		if rt.watches[name] != nil {
			continue
		}
		w, err := rt.watch(name)
		if err != nil {
			rt.logger.Error("cannot watch a routed service", zap.String("service", name), zap.Error(err))
			continue
		}
		w.Subscribe(rt.wake)
		rt.watches[name] = w
	}
}

// healthKey is the health watch of a routed service: its passing
// instances in the router's datacenter, with the consul source's defaults.
func (rt *Router) healthKey(service string) consul.HealthKey {
	return consul.HealthKey{
		Endpoint: rt.conn.Endpoint, Service: service, Datacenter: rt.conn.Datacenter,
		Health: consul.HealthPassing, Consistency: consul.ConsistencyStale,
		Wait: consul.DefaultWait, HoldLast: consul.DefaultHoldLast,
	}
}

// watch takes the shared health watch of a routed service.
func (rt *Router) watch(service string) (*consul.HealthWatch, error) {
	key := rt.healthKey(service)
	return consul.HealthWatches.Take(key, func() (*consul.HealthWatch, error) {
		w, err := consul.NewHealthWatch(key, rt.conn, consul.PollerOptions{})
		if err != nil {
			return nil, err
		}
		return w, w.Start()
	})
}

// unwatch lets go of a routed service's watch.
func (rt *Router) unwatch(service string) {
	rt.watches[service].Unsubscribe(rt.wake)
	consul.HealthWatches.Release(rt.healthKey(service))
	delete(rt.watches, service)
}
