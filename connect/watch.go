package connect

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"

	"github.com/caddymesh/caddymesh/internal/spiffe"
)

// connectWait is how long a blocking query of the leaf or roots waits.
const connectWait = 5 * time.Minute

// rootsWatches and leafWatches hold the shared watches: one of the roots
// per Consul connection, one of the leaf per connection and service,
// across routes, modules and config reloads.
var (
	rootsWatches = caddy.NewUsagePool()
	leafWatches  = caddy.NewUsagePool()
)

// leafKey is what makes two leaf watches differ.
type leafKey struct {
	conn    string
	service string
}

// watch is the running part of a roots or leaf watch.
type watch struct {
	cancel    context.CancelFunc
	done      chan struct{}
	tried     chan struct{}
	triedOnce sync.Once
	logger    *zap.Logger
	failing   atomic.Bool
}

// start runs q's blocking queries on a goroutine of its own.
func start[T any](w *watch, conn consulConn, q querier[T]) {
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel, w.done, w.tried = cancel, make(chan struct{}), make(chan struct{})
	go func() {
		defer close(w.done)
		poll(ctx, conn.client, q, func() { w.triedOnce.Do(func() { close(w.tried) }) })
	}()
}

// Destruct stops the watch and waits for its goroutine.
func (w *watch) Destruct() error {
	w.cancel()
	<-w.done
	return nil
}

// awaitFirstTry waits, at most timeout, for the watch's first answer or
// failure.
func (w *watch) awaitFirstTry(timeout time.Duration) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-w.tried:
	case <-t.C:
	}
}

// rootsWatch keeps Consul's Connect CA roots current.
type rootsWatch struct {
	watch
	ca      ConnectCA
	current atomic.Pointer[roots]
}

// startRootsWatch starts watching the roots of conn.
func startRootsWatch(conn consulConn, logger *zap.Logger) *rootsWatch {
	w := &rootsWatch{ca: agentCA{conn.client}}
	w.logger = logger
	start(&w.watch, conn, querier[*api.CARootList](w))
	return w
}

// Query asks the agent for the roots.
func (w *rootsWatch) Query(_ *api.Client, q *api.QueryOptions, _ bool) (*api.CARootList, *api.QueryMeta, error) {
	return w.ca.Roots(q)
}

// Wait is the blocking query's wait.
func (*rootsWatch) Wait() time.Duration { return connectWait }

// Apply takes Consul's answer, when it changes the roots.
func (w *rootsWatch) Apply(answer *api.CARootList) {
	next, err := parseRoots(answer)
	if err != nil {
		w.logger.Error("ignoring Consul's Connect roots", zap.Error(err))
		return
	}
	if old := w.current.Load(); old != nil && old.activeID == next.activeID && slices.Equal(old.ids, next.ids) && old.trustDomain == next.trustDomain {
		return
	}
	w.current.Store(next)
	spiffe.Trusted.Set(w, next.trustDomain, next.rootsDER())
	w.logger.Info("Connect roots", zap.String("trust_domain", next.trustDomain), zap.String("active", next.activeID), zap.Strings("ids", next.ids))
}

// Destruct stops the watch and forgets its roots.
func (w *rootsWatch) Destruct() error {
	err := w.watch.Destruct()
	spiffe.Trusted.Set(w, "", nil)
	return err
}

// leafWatch keeps a service's leaf certificate current.
type leafWatch struct {
	watch
	service       string
	ca            ConnectCA
	current       atomic.Pointer[leaf]
	expiredLogged atomic.Pointer[leaf] // the last expired leaf logged
}

// startLeafWatch starts watching the leaf of service through conn.
func startLeafWatch(conn consulConn, service string, logger *zap.Logger) *leafWatch {
	w := &leafWatch{service: service, ca: agentCA{conn.client}}
	w.logger = logger
	start(&w.watch, conn, querier[*api.LeafCert](w))
	return w
}

// Query asks the agent for the leaf.
func (w *leafWatch) Query(_ *api.Client, q *api.QueryOptions, _ bool) (*api.LeafCert, *api.QueryMeta, error) {
	return w.ca.Leaf(w.service, q)
}

// Wait is the blocking query's wait.
func (*leafWatch) Wait() time.Duration { return connectWait }

// Apply takes Consul's answer, when it is a new certificate.
func (w *leafWatch) Apply(answer *api.LeafCert) {
	next, err := parseLeaf(answer)
	if err != nil {
		w.logger.Error("ignoring a leaf certificate from Consul", zap.String("service", w.service), zap.Error(err))
		return
	}
	if old := w.current.Load(); old != nil && old.serial == next.serial {
		return
	}
	w.current.Store(next)
	w.logger.Info("Connect leaf certificate", zap.String("service", w.service), zap.String("serial", next.serial),
		zap.String("spiffe_id", next.id.String()), zap.Time("valid_before", next.validBefore))
}
