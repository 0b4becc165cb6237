package connect

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"

	"github.com/caddymesh/caddymesh/internal/consul"
	"github.com/caddymesh/caddymesh/internal/spiffe"
)

// rootsWatches and leafWatches hold the shared watches: one of the roots
// per Consul connection, one of the leaf per connection and service,
// across routes, modules and config reloads.
var (
	rootsWatches = consul.NewRegistry[consul.Endpoint, *rootsWatch]()
	leafWatches  = consul.NewRegistry[leafKey, *leafWatch]()
)

// leafKey is what makes two leaf watches differ.
type leafKey struct {
	consul.Endpoint
	Service string
}

// logger is the logger of the Connect watches, which outlive configs.
func logger() *zap.Logger { return caddy.Log().Named("mesh.connect") }

// rootsWatch keeps Consul's Connect CA roots current.
type rootsWatch struct {
	*consul.Poller[*api.CARootList]
	current atomic.Pointer[roots]
	pools   sync.Map // *CAPool: the inbound trust pools of the live configs built from these roots
}

// takeRoots returns the shared watch of conn's roots, started by its first
// user.
func takeRoots(conn consul.Connection) (*rootsWatch, error) {
	return rootsWatches.Take(conn.Endpoint, func() (*rootsWatch, error) {
		w := new(rootsWatch)
		p, err := consul.NewPoller(conn, consul.Querier[*api.CARootList](w),
			consul.PollerOptions{Subject: "(connect roots)", Datacenter: conn.Datacenter, Logger: logger})
		if err != nil {
			return nil, err
		}
		w.Poller = p
		return w, p.Start()
	})
}

// Query asks the agent for the roots.
func (w *rootsWatch) Query(client *api.Client, q *api.QueryOptions, _ bool) (*api.CARootList, *api.QueryMeta, error) {
	return consul.AgentConnectCA(client).Roots(q)
}

// Wait is the blocking query's wait.
func (*rootsWatch) Wait() time.Duration { return consul.DefaultWait }

// Apply takes Consul's answer, when it changes the roots.
func (w *rootsWatch) Apply(answer *api.CARootList) {
	next, err := parseRoots(answer)
	if err != nil {
		logger().Error("ignoring Consul's Connect roots", zap.Error(err))
		return
	}
	if old := w.current.Load(); old != nil && old.activeID == next.activeID && slices.Equal(old.ids, next.ids) && old.trustDomain == next.trustDomain {
		return
	}
	old := w.current.Swap(next)
	spiffe.Trusted.Set(w, next.trustDomain, next.rootsDER())
	logger().Info("Connect roots", zap.String("trust_domain", next.trustDomain), zap.String("active", next.activeID), zap.Strings("ids", next.ids))
	if old != nil && old.activeID != next.activeID && !w.poolsFollow(old, next) {
		logger().Error("an inbound trust_pool connect loaded before the last two Connect CA rotations cannot verify the new root's leaves: load Caddy's config again",
			zap.String("active", next.activeID))
	}
}

// poolsFollow reports whether every inbound trust pool built from these
// roots follows the rotation from old's active root to next's.
func (w *rootsWatch) poolsFollow(old, next *roots) bool {
	follow := true
	w.pools.Range(func(pool, _ any) bool {
		follow = pool.(*CAPool).followsRotation(old, next)
		return follow
	})
	return follow
}

// Stop stops the watch and forgets its roots.
func (w *rootsWatch) Stop() {
	w.Poller.Stop()
	spiffe.Trusted.Set(w, "", nil)
}

// leafWatch keeps a service's leaf certificate current.
type leafWatch struct {
	*consul.Poller[*api.LeafCert]
	key           leafKey
	current       atomic.Pointer[leaf]
	expiredLogged atomic.Pointer[leaf] // the last expired leaf logged
}

// takeLeaf returns the shared watch of the leaf of key's service, started
// by its first user.
func takeLeaf(key leafKey, conn consul.Connection) (*leafWatch, error) {
	return leafWatches.Take(key, func() (*leafWatch, error) {
		w := &leafWatch{key: key}
		p, err := consul.NewPoller(conn, consul.Querier[*api.LeafCert](w),
			consul.PollerOptions{Subject: key.Service, Datacenter: conn.Datacenter, Logger: logger})
		if err != nil {
			return nil, err
		}
		w.Poller = p
		return w, p.Start()
	})
}

// Query asks the agent for the leaf.
func (w *leafWatch) Query(client *api.Client, q *api.QueryOptions, _ bool) (*api.LeafCert, *api.QueryMeta, error) {
	return consul.AgentConnectCA(client).Leaf(w.key.Service, q)
}

// Wait is the blocking query's wait.
func (*leafWatch) Wait() time.Duration { return consul.DefaultWait }

// Apply takes Consul's answer, when it is a new certificate.
func (w *leafWatch) Apply(answer *api.LeafCert) {
	next, err := parseLeaf(answer)
	if err != nil {
		logger().Error("ignoring a leaf certificate from Consul", zap.String("service", w.key.Service), zap.Error(err))
		return
	}
	if old := w.current.Load(); old != nil && old.serial == next.serial {
		return
	}
	w.current.Store(next)
	logger().Info("Connect leaf certificate", zap.String("service", w.key.Service), zap.String("serial", next.serial),
		zap.String("spiffe_id", next.id.String()), zap.Time("valid_before", next.validBefore))
}

// logExpiredOnce logs, once per certificate, that the leaf held has
// expired without a new one from Consul.
func (w *leafWatch) logExpiredOnce(l *leaf) {
	if w.expiredLogged.Swap(l) != l {
		logger().Error("the Connect leaf certificate has expired and Consul gave no new one: handshakes fail",
			zap.String("service", w.key.Service), zap.String("serial", l.serial), zap.Time("valid_before", l.validBefore))
	}
}
