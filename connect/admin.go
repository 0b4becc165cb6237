package connect

import (
	"cmp"
	"net/http"
	"slices"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddymesh/caddymesh/internal/adminjson"
)

func init() {
	caddy.RegisterModule(Admin{})
}

// Admin serves GET /mesh/connect on Caddy's admin endpoint: each Connect
// leaf certificate held (service, serial, SPIFFE ID, validity) and Consul's
// Connect roots (IDs, the active one, the trust domain). No private key and
// no token ever appear.
type Admin struct{}

// CaddyModule returns the Caddy module information.
func (Admin) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.mesh_connect",
		New: func() caddy.Module { return new(Admin) },
	}
}

// Routes returns Connect's admin route.
func (Admin) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: "/mesh/connect", Handler: adminjson.Get(connectViews)}}
}

// connectView is what GET /mesh/connect answers.
type connectView struct {
	Leaves []leafView  `json:"leaves"`
	Roots  []rootsView `json:"roots"`
}

// leafView is a leaf certificate held, or awaited from Consul.
type leafView struct {
	Service     string     `json:"service"`
	Serial      string     `json:"serial,omitempty"`
	SPIFFEID    string     `json:"spiffe_id,omitempty"`
	ValidAfter  *time.Time `json:"valid_after,omitempty"`
	ValidBefore *time.Time `json:"valid_before,omitempty"`
}

// rootsView is the Connect roots of one Consul.
type rootsView struct {
	TrustDomain string   `json:"trust_domain,omitempty"`
	Active      string   `json:"active,omitempty"`
	IDs         []string `json:"ids"`
}

// connectViews answers GET /mesh/connect.
func connectViews(*http.Request) (any, error) {
	view := connectView{Leaves: []leafView{}, Roots: []rootsView{}}
	for _, lw := range allLeafWatches() {
		v := leafView{Service: lw.key.Service}
		if l := lw.current.Load(); l != nil {
			v.Serial, v.SPIFFEID, v.ValidAfter, v.ValidBefore = l.serial, l.id.String(), &l.validAfter, &l.validBefore
		}
		view.Leaves = append(view.Leaves, v)
	}
	for _, rw := range allRootsWatches() {
		v := rootsView{IDs: []string{}}
		if roots := rw.current.Load(); roots != nil {
			v.TrustDomain, v.Active, v.IDs = roots.trustDomain, roots.activeID, roots.ids
		}
		view.Roots = append(view.Roots, v)
	}
	slices.SortFunc(view.Leaves, func(a, b leafView) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), cmp.Compare(a.Serial, b.Serial))
	})
	slices.SortFunc(view.Roots, func(a, b rootsView) int { return cmp.Compare(a.TrustDomain, b.TrustDomain) })
	return view, nil
}

// Interface guards
var _ caddy.AdminRouter = Admin{}
