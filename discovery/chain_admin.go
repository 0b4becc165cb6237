package discovery

import (
	"cmp"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/hashicorp/consul/api"

	"github.com/caddymesh/caddymesh/internal/running"
)

// chainView is a discovery chain as a source evaluates it, for
// GET /mesh/chains/<service>. It never holds a token.
type chainView struct {
	Service     string            `json:"service"`
	Datacenter  string            `json:"datacenter"`
	Consul      string            `json:"consul"`
	Protocol    string            `json:"protocol,omitempty"`
	Default     bool              `json:"default"` // no config entry shapes it
	ConsulIndex uint64            `json:"consul_index"`
	LastError   string            `json:"last_error,omitempty"`
	Chain       []chainRouteView  `json:"chain"`
	Targets     []chainTargetView `json:"targets"`
	NotHonoured []string          `json:"not_honoured"`
}

// chainRouteView is a route in match order, with its split.
type chainRouteView struct {
	Match         *api.ServiceRouteMatch `json:"match,omitempty"` // none: every request
	PrefixRewrite string                 `json:"prefix_rewrite,omitempty"`
	Splits        []chainSplitView       `json:"splits"`
}

// chainSplitView is a leg of a route: its weight in percent and its
// targets in failover order.
type chainSplitView struct {
	Weight   float64  `json:"weight"`
	Resolver string   `json:"resolver"`
	Targets  []string `json:"targets"`
}

// chainTargetView is a target with its instances.
type chainTargetView struct {
	ID         string `json:"id"`
	Service    string `json:"service"`
	Subset     string `json:"subset,omitempty"`
	Datacenter string `json:"datacenter"`
	Filter     string `json:"filter,omitempty"`
	Healthy    int    `json:"healthy"`
	Total      int    `json:"total"`
	Answered   bool   `json:"answered"` // its health watch has an answer
}

// followers are the chain followers of the sources running.
var followers running.Set[*chainFollower]

// chainViews answers /mesh/chains/<service>: one view per source that
// follows the service's chain.
func chainViews(r *http.Request) (any, error) {
	name := strings.TrimPrefix(r.URL.Path, "/mesh/chains/")
	views := []chainView{}
	for _, f := range followers.All() {
		if f.key.Service == name {
			views = append(views, f.view())
		}
	}
	if len(views) == 0 {
		return nil, caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("no source follows the chain of %q", name)}
	}
	slices.SortFunc(views, func(a, b chainView) int {
		return cmp.Or(strings.Compare(a.Datacenter, b.Datacenter), strings.Compare(a.Consul, b.Consul))
	})
	return views, nil
}

func (f *chainFollower) view() chainView {
	status := f.watch.Status()
	v := chainView{Service: f.key.Service, Datacenter: f.key.Datacenter, Consul: f.key.Address,
		ConsulIndex: status.Index, LastError: status.Err, Chain: []chainRouteView{}, Targets: []chainTargetView{}, NotHonoured: []string{}}
	if chain := f.watch.Chain(); chain != nil {
		v.Protocol, v.Default = chain.Protocol, chain.Default
		v.Datacenter = cmp.Or(v.Datacenter, chain.Datacenter)
	}
	ev := f.current.Load()
	if ev == nil {
		return v
	}
	for i := range ev.routes {
		v.Chain = append(v.Chain, ev.routes[i].view())
	}
	for _, t := range ev.targets {
		v.Targets = append(v.Targets, t.view())
	}
	v.NotHonoured = append(v.NotHonoured, ev.notHonoured...)
	if f.responseHeadersDropped.Load() {
		v.NotHonoured = append(v.NotHonoured, responseHeadersWithoutHandler)
	}
	return v
}

func (route *chainRoute) view() chainRouteView {
	v := chainRouteView{PrefixRewrite: route.prefixRewrite}
	if route.def != nil {
		v.Match = route.def.Match
	}
	for _, leg := range route.legs {
		split := chainSplitView{Weight: float64(leg.weight) / splitScale, Resolver: leg.resolver.name}
		for _, t := range leg.resolver.targets {
			split.Targets = append(split.Targets, t.id)
		}
		v.Splits = append(v.Splits, split)
	}
	return v
}

func (t *chainTarget) view() chainTargetView {
	v := chainTargetView{ID: t.id, Service: t.def.Service, Subset: t.def.ServiceSubset,
		Datacenter: t.def.Datacenter, Filter: t.def.Subset.Filter}
	if sw, ok := t.pool.(*serviceWatch); ok && len(sw.watchers) > 0 {
		if a := sw.watchers[0].Current(); a != nil {
			v.Answered, v.Healthy, v.Total = true, len(a.Healthy.Instances), len(a.All.Instances)
		}
	}
	return v
}
