package discovery

import (
	"cmp"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddymesh/caddymesh/internal/adminjson"
	"github.com/caddymesh/caddymesh/internal/consul"
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
//
// The gateway's admin.api.mesh_routes serves /mesh/routes.
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
		{Pattern: "/mesh/services", Handler: adminjson.Get(func(*http.Request) (any, error) { return watchViews(""), nil })},
		{Pattern: "/mesh/services/", Handler: adminjson.Get(serviceWatches)},
		{Pattern: "/mesh/registrations", Handler: adminjson.Get(func(*http.Request) (any, error) { return registrationViews(), nil })},
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
	consul.HealthWatches.Range(func(_ consul.HealthKey, w *consul.HealthWatch, users int) {
		if service == "" || w.Key.Service == service {
			views = append(views, viewOf(w, users))
		}
	})
	slices.SortFunc(views, func(a, b watchView) int {
		return cmp.Or(strings.Compare(a.Service, b.Service), strings.Compare(a.Datacenter, b.Datacenter),
			strings.Compare(a.Filter, b.Filter), strings.Compare(a.Health, b.Health))
	})
	return views
}

// viewOf is how the admin API shows w, which users sources use.
func viewOf(w *consul.HealthWatch, users int) watchView {
	status := w.Status()
	v := watchView{
		Service: w.Key.Service, Datacenter: w.Key.Datacenter, Tags: w.Tags, Filter: w.UserFilter,
		Health: w.Key.Health, Consistency: w.Key.Consistency, Near: w.Key.Near, Consul: w.Key.Address,
		Routes: users, ConsulIndex: status.Index, LastError: status.Err, Instances: []pool.Instance{},
	}
	v.Staleness = w.Staleness(time.Now()).Round(time.Millisecond).String()
	v.KnownLeader = w.KnownLeader()
	if !status.SyncedAt.IsZero() {
		v.LastSync = &status.SyncedAt
	}
	if !status.FailingSince.IsZero() {
		v.FailingSince = &status.FailingSince
	}
	if a := w.Current(); a != nil {
		if a.Held() {
			v.HoldingLast = &a.HeldUntil
		}
		v.SnapshotVersion, v.Healthy, v.Total, v.Maintenance = a.Healthy.Version, len(a.Healthy.Instances), len(a.All.Instances), a.Maintenance
		v.Instances = a.All.Instances
	}
	return v
}

// Interface guards
var _ caddy.AdminRouter = Admin{}
