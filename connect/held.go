package connect

import (
	"crypto/tls"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddymesh/caddymesh/internal/consul"
)

// firstAnswerTimeout bounds how long provisioning waits for Consul's first
// answers, so that traffic does not start without certificates.
const firstAnswerTimeout = 3 * time.Second

// held is what a module holds of the shared watches: the roots of its
// Consul connection, and a service's leaf when it presents one.
type held struct {
	roots    *rootsWatch
	rootsAt  consul.Endpoint
	leaf     *leafWatch // nil for the CA pool
	released atomic.Bool
}

// hold takes the shared watches a module needs, over the module's Consul
// settings layered on the mesh app's: the roots, and service's leaf unless
// service is empty. It waits briefly for their first answers.
func hold(ctx caddy.Context, settings *consul.Config, service string) (*held, error) {
	conn, err := consul.Provision(ctx, settings)
	if err != nil {
		return nil, err
	}
	if err := consul.RegisterMetrics(ctx, metrics); err != nil {
		return nil, err
	}
	h := &held{rootsAt: conn.Endpoint}
	if h.roots, err = takeRoots(conn); err != nil {
		return nil, err
	}
	if service != "" {
		if h.leaf, err = takeLeaf(leafKey{Endpoint: conn.Endpoint, Service: service}, conn); err != nil {
			h.release()
			return nil, err
		}
	}
	h.awaitFirstAnswers(ctx)
	return h, nil
}

// awaitFirstAnswers waits, at most firstAnswerTimeout, until each watch
// has had its first answer or failure.
func (h *held) awaitFirstAnswers(ctx caddy.Context) {
	watches := []consul.Tried{h.roots}
	if h.leaf != nil {
		watches = append(watches, h.leaf)
	}
	consul.AwaitFirstTries(ctx, firstAnswerTimeout, watches...)
}

// release lets go of the watches, once; the last user of each stops it.
// The module keeps what they last held: a handshake or dial that still
// comes (an active health check in flight at a config unload, a
// connection of a server in its grace period) gets the last certificate
// or a plain error, never a nil watch, which would crash the process from
// the transport's dial goroutine.
func (h *held) release() {
	if h == nil || !h.released.CompareAndSwap(false, true) {
		return
	}
	if h.leaf != nil {
		leafWatches.Release(h.leaf.key)
	}
	if h.roots != nil {
		rootsWatches.Release(h.rootsAt)
	}
}

// errNoLeaf says a handshake had no certificate to present.
var errNoLeaf = errors.New("no valid leaf certificate from Consul")

// certificate returns the service's current leaf for a handshake at now:
// none before Consul first gives one, nor once it has expired (Consul
// unreachable since).
func (h *held) certificate(now time.Time) (*tls.Certificate, error) {
	l := h.leaf.current.Load()
	if l == nil || !now.Before(l.validBefore) {
		if l != nil {
			h.leaf.logExpiredOnce(l)
		}
		return nil, fmt.Errorf("connect: %s: %w", h.leaf.key.Service, errNoLeaf)
	}
	return l.cert, nil
}
