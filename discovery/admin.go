package discovery

import (
	"cmp"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddymesh/caddymesh/internal/pool"
)

func init() {
	caddy.RegisterModule(Admin{})
}

// Admin is the mesh's admin API, served by Caddy's admin endpoint under
// /mesh/:
//
//   - GET /mesh/services: every Consul service watched, with its instances.
//   - GET /mesh/services/<name>: the watches of one service.
//   - GET /mesh/registrations: the instances this Caddy keeps registered.
//   - GET /mesh/routes: the route table of each mesh_router.
//   - GET /mesh/chains/<service>: the discovery chain of a service as the
//     sources with chain evaluate it: routes, split weights, targets with
//     their healthy and total instances, and what is not honoured.
//
// Answers are JSON; errors are JSON too ({"error": "..."}). No ACL token
// ever appears in them.
type Admin struct{}

// CaddyModule returns the Caddy module information.
func (Admin) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.mesh",
		New: func() caddy.Module { return new(Admin) },
	}
}

// Routes returns the mesh's admin routes.
func (Admin) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: "/mesh/services", Handler: get(func(*http.Request) (any, error) { return watchViews(""), nil })},
		{Pattern: "/mesh/services/", Handler: get(serviceWatches)},
		{Pattern: "/mesh/registrations", Handler: get(func(*http.Request) (any, error) { return registrationViews(), nil })},
		{Pattern: "/mesh/routes", Handler: get(func(*http.Request) (any, error) { return routeTableViews(), nil })},
		{Pattern: "/mesh/chains/", Handler: get(chainViews)},
	}
}

// serviceWatches answers /mesh/services/<name>.
func serviceWatches(r *http.Request) (any, error) {
	name := strings.TrimPrefix(r.URL.Path, "/mesh/services/")
	var views []watchView
	if name != "" { // watchViews("") would be every watch
		views = watchViews(name)
	}
	if len(views) == 0 {
		return nil, caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("service %q is not watched", name)}
	}
	return views, nil
}

// get makes an admin handler of a GET-only JSON endpoint.
func get(answer func(*http.Request) (any, error)) caddy.AdminHandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		if r.Method != http.MethodGet {
			return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method %s not allowed; use GET", r.Method)}
		}
		body, err := answer(r)
		if err != nil {
			return err
		}
		w.Header().Set("Content-Type", "application/json")
		return json.NewEncoder(w).Encode(body)
	}
}

// watchView is a watch as the admin API shows it: what it watches, where
// it stands with Consul, and what it found. It never holds a token.
type watchView struct {
	Service         string          `json:"service"`
	Datacenter      string          `json:"datacenter,omitempty"`
	Tags            []string        `json:"tags,omitempty"`
	Filter          string          `json:"filter,omitempty"`
	Health          string          `json:"health"`
	Consistency     string          `json:"consistency"`
	Near            string          `json:"near,omitempty"`
	Consul          string          `json:"consul"`
	Routes          int             `json:"routes"`
	SnapshotVersion uint64          `json:"snapshot_version"`
	ConsulIndex     uint64          `json:"consul_index"`
	LastSync        *time.Time      `json:"last_sync,omitempty"`
	Staleness       string          `json:"staleness"`
	KnownLeader     bool            `json:"known_leader"`
	HoldingLast     *time.Time      `json:"holding_last,omitempty"`
	LastError       string          `json:"last_error,omitempty"`
	FailingSince    *time.Time      `json:"failing_since,omitempty"`
	Healthy         int             `json:"healthy"`
	Total           int             `json:"total"`
	Maintenance     int             `json:"maintenance"`
	Instances       []pool.Instance `json:"instances"`
}

// watchViews lists the watches of service, or of every service when it is
// empty, in a stable order.
func watchViews(service string) []watchView {
	views := []watchView{}
	forEachWatcher(func(w *watcher, users int) {
		if service == "" || w.key.service == service {
			views = append(views, w.view(users))
		}
	})
	slices.SortFunc(views, func(a, b watchView) int {
		return cmp.Or(strings.Compare(a.Service, b.Service), strings.Compare(a.Datacenter, b.Datacenter),
			strings.Compare(a.Filter, b.Filter), strings.Compare(a.Health, b.Health))
	})
	return views
}

func (w *watcher) view(users int) watchView {
	status := w.status.Load()
	v := watchView{
		Service: w.key.service, Datacenter: w.key.datacenter, Tags: w.tags, Filter: w.userFilter,
		Health: w.key.health, Consistency: w.key.consistency, Near: w.key.near, Consul: w.key.address,
		Routes: users, ConsulIndex: status.index, LastError: status.err, Instances: []pool.Instance{},
	}
	leader := w.leaderState()
	v.Staleness = status.staleness(time.Now(), leader).Round(time.Millisecond).String()
	v.KnownLeader = status.knownLeader(leader)
	v.HoldingLast = w.holding.Load()
	if !status.syncedAt.IsZero() {
		v.LastSync = &status.syncedAt
	}
	if !status.failingSince.IsZero() {
		v.FailingSince = &status.failingSince
	}
	if a := w.current.Load(); a != nil {
		v.SnapshotVersion, v.Healthy, v.Total, v.Maintenance = a.healthy.Version, len(a.healthy.Instances), len(a.all.Instances), a.maintenance
		v.Instances = a.all.Instances
	}
	return v
}

// routeTableView is a mesh_router's table as the admin API shows it: its
// routes in the order they are matched, the declarations that lost a
// conflict, and those that could not be read.
type routeTableView struct {
	Routes    []routeView     `json:"routes"`
	Conflicts []routeConflict `json:"conflicts"`
	Rejected  []rejectedRoute `json:"rejected"`
}

// routeView is a route and the instances serving it.
type routeView struct {
	*routeEntry
	Instances []string `json:"instances"`
}

func routeTableViews() []routeTableView {
	views := []routeTableView{}
	for _, t := range routeTables() {
		v := routeTableView{Routes: []routeView{}, Conflicts: t.conflicts, Rejected: t.rejected}
		for _, e := range t.inMatchOrder() {
			dials := []string{}
			for _, inst := range e.instances.Instances {
				dials = append(dials, inst.Dial)
			}
			v.Routes = append(v.Routes, routeView{routeEntry: e, Instances: dials})
		}
		if v.Conflicts == nil {
			v.Conflicts = []routeConflict{}
		}
		if v.Rejected == nil {
			v.Rejected = []rejectedRoute{}
		}
		views = append(views, v)
	}
	return views
}

// Interface guards
var _ caddy.AdminRouter = Admin{}
