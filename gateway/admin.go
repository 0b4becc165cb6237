package gateway

import (
	"net/http"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddymesh/caddymesh/internal/adminjson"
)

func init() {
	caddy.RegisterModule(Admin{})
}

// Admin serves, under Caddy's admin endpoint, GET /mesh/routes: the route
// table of each mesh_router running, as JSON. The mesh app's admin.api.mesh
// serves the rest of /mesh/.
type Admin struct{}

// CaddyModule returns the Caddy module information.
func (Admin) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.mesh_routes",
		New: func() caddy.Module { return new(Admin) },
	}
}

// Routes returns the admin route of /mesh/routes.
func (Admin) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: "/mesh/routes", Handler: adminjson.Get(func(*http.Request) (any, error) { return routeTableViews(), nil })},
	}
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
