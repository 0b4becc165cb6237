package middleware

import (
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddymesh/caddymesh/internal/keyed"
	"github.com/caddymesh/caddymesh/internal/reqkey"
)

// perKey is a handler's state: one T per request key, or a single one when
// the handler has no key.
type perKey[T any] struct {
	key   reqkey.Func
	store *keyed.Store[T]
}

// newPerKey keeps at most maxKeys states of key (a placeholder expression;
// empty for one state), forgetting those unused for idleAfter. Its sweeper
// stops with ctx's config.
func newPerKey[T any](ctx caddy.Context, key string, maxKeys int, idleAfter time.Duration, create func() T) *perKey[T] {
	p := &perKey[T]{key: func(*http.Request) string { return "" }, store: keyed.New(maxKeys, idleAfter, create)}
	if key != "" {
		p.key = reqkey.Compile(key)
	}
	go p.sweep(ctx, min(idleAfter, time.Minute))
	return p
}

// acquire returns the state of r's key, held until its Release; nil when
// too many keys are in use.
func (p *perKey[T]) acquire(r *http.Request, now time.Time) *keyed.Entry[T] {
	return p.store.Acquire(p.key(r), now)
}

func (p *perKey[T]) sweep(ctx caddy.Context, every time.Duration) {
	ticker := time.NewTicker(every)
	defer ticker.Stop()
	for {
		select {
		case now := <-ticker.C:
			p.store.Sweep(now)
		case <-ctx.Done():
			return
		}
	}
}
