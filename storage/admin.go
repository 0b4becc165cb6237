package storage

import (
	"cmp"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/caddyserver/caddy/v2"
)

func init() {
	caddy.RegisterModule(Admin{})
}

// Admin serves GET /mesh/storage on Caddy's admin endpoint: each consul_kv
// storage of the configs running, with its prefix and the locks this
// instance holds, with their Consul sessions. No token ever appears.
type Admin struct{}

// CaddyModule returns the Caddy module information.
func (Admin) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.mesh_storage",
		New: func() caddy.Module { return new(Admin) },
	}
}

// Routes returns the storage's admin route.
func (Admin) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: "/mesh/storage", Handler: caddy.AdminHandlerFunc(serveStorage)}}
}

// storageView is a consul_kv storage as the admin API shows it.
type storageView struct {
	Prefix    string     `json:"prefix"`
	Encrypted bool       `json:"encrypted"`
	Locks     []lockView `json:"locks"`
}

// lockView is a lock held by this instance.
type lockView struct {
	Name     string    `json:"name"`
	Key      string    `json:"key"`
	Session  string    `json:"session"`
	Acquired time.Time `json:"acquired"`
}

func serveStorage(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method %s not allowed; use GET", r.Method)}
	}
	views := []storageView{}
	for _, s := range instances.All() {
		view := storageView{Prefix: s.Prefix, Encrypted: s.aead != nil, Locks: []lockView{}}
		for _, l := range s.locks.all() {
			view.Locks = append(view.Locks, lockView{Name: l.name, Key: l.key, Session: l.session, Acquired: l.acquired})
		}
		slices.SortFunc(view.Locks, func(a, b lockView) int { return cmp.Compare(a.Name, b.Name) })
		views = append(views, view)
	}
	slices.SortFunc(views, func(a, b storageView) int { return cmp.Compare(a.Prefix, b.Prefix) })
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(views)
}

// Interface guards
var _ caddy.AdminRouter = Admin{}
