package connect

import (
	"crypto/tls"
	"errors"
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddymesh/caddymesh/discovery"
)

// firstAnswerTimeout bounds how long provisioning waits for Consul's first
// answer, so that traffic does not start without certificates.
const firstAnswerTimeout = 3 * time.Second

// held is what a module holds of the shared watches: the roots of its
// Consul connection, and a service's leaf when it presents one.
type held struct {
	conn     consulConn
	roots    *rootsWatch
	leaf     *leafWatch // nil for the CA pool
	leafKey  leafKey
	released bool
}

// hold takes the shared watches a module needs, over the module's Consul
// settings layered on the mesh app's: the roots, and service's leaf unless
// service is empty. It waits briefly for their first answers.
func hold(ctx caddy.Context, settings *discovery.ConsulConfig, service string) (*held, error) {
	conn, err := dialConsul(ctx, settings)
	if err != nil {
		return nil, err
	}
	if err := metrics.register(ctx); err != nil {
		return nil, err
	}
	logger := caddy.Log().Named("mesh.connect")
	h := &held{conn: conn}
	value, _, err := rootsWatches.LoadOrNew(conn.key, func() (caddy.Destructor, error) {
		return startRootsWatch(conn, logger), nil
	})
	if err != nil {
		return nil, err
	}
	h.roots = value.(*rootsWatch)
	if service != "" {
		h.leafKey = leafKey{conn: conn.key, service: service}
		value, _, err := leafWatches.LoadOrNew(h.leafKey, func() (caddy.Destructor, error) {
			return startLeafWatch(conn, service, logger), nil
		})
		if err != nil {
			h.release()
			return nil, err
		}
		h.leaf = value.(*leafWatch)
	}
	h.awaitFirstAnswers()
	return h, nil
}

// awaitFirstAnswers waits, at most firstAnswerTimeout in all, until each
// watch has had its first answer or failure.
func (h *held) awaitFirstAnswers() {
	deadline := time.Now().Add(firstAnswerTimeout)
	h.roots.awaitFirstTry(time.Until(deadline))
	if h.leaf != nil {
		h.leaf.awaitFirstTry(time.Until(deadline))
	}
}

// release lets go of the watches; the last user stops them.
func (h *held) release() {
	if h == nil || h.released {
		return
	}
	h.released = true
	if h.leaf != nil {
		_, _ = leafWatches.Delete(h.leafKey)
	}
	_, _ = rootsWatches.Delete(h.conn.key)
	h.conn.closeIdle()
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
		return nil, fmt.Errorf("connect: %s: %w", h.leaf.service, errNoLeaf)
	}
	return l.cert, nil
}

// logExpiredOnce logs, once per certificate, that the leaf held has
// expired without a new one from Consul.
func (w *leafWatch) logExpiredOnce(l *leaf) {
	if w.expiredLogged.CompareAndSwap(nil, l) {
		w.logger.Error("the Connect leaf certificate has expired and Consul gave no new one: handshakes fail",
			zap.String("service", w.service), zap.String("serial", l.serial), zap.Time("valid_before", l.validBefore))
	}
}
