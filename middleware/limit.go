package middleware

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"golang.org/x/time/rate"
)

func init() {
	caddy.RegisterModule(new(Limit))
}

// maxLimitKeys caps the keys a limit keeps, so that a flood of distinct
// keys cannot exhaust memory.
const maxLimitKeys = 1 << 16

// Limit shapes traffic per key: a token bucket caps the rate, and a cap on
// requests in flight, with a bounded queue before it, caps concurrency.
//
// A request over the rate is answered 429; one that finds the queue full,
// or waits in it longer than queue_timeout, 503; both with Retry-After and
// as Caddy HTTP errors. A client that goes away while queued frees its
// place at once. Keys unused for a while are forgotten, and at most 65,536
// are kept.
type Limit struct {
	// Requests with the same key share a limit: any placeholder, such as
	// {http.vars.mesh_caller} (set by mesh_identity) or
	// {http.request.remote.host}. Default: one limit for every request
	// through the handler.
	Key string `json:"key,omitempty"`

	// Requests allowed per unit of time, on average, such as 100/s, 6000/m
	// or 5/100ms. Default: no rate limit.
	Rate string `json:"rate,omitempty"`

	// Requests allowed at once above the rate. Default: one second's worth
	// of the rate, at least 1.
	Burst int `json:"burst,omitempty"`

	// Requests in flight at most. Default: no cap.
	Concurrency int `json:"concurrency,omitempty"`

	// Requests that may wait for a place when concurrency is reached;
	// beyond, they are refused. Default: 0.
	Queue int `json:"queue,omitempty"`

	// How long a request may wait in the queue. Default: 1s.
	QueueTimeout caddy.Duration `json:"queue_timeout,omitempty"`

	perSecond rate.Limit
	buckets   *perKey[*bucket]
	now       func() time.Time
}

// bucket is one key's limits.
type bucket struct {
	tokens  *rate.Limiter // nil without a rate
	slots   chan struct{} // places in flight; nil without concurrency
	waiting atomic.Int32  // requests in the queue
}

var (
	errRateExceeded = errors.New("mesh_limit: rate exceeded")
	errQueueFull    = errors.New("mesh_limit: queue full")
	errQueueTimeout = errors.New("mesh_limit: queued too long")
)

// CaddyModule returns the Caddy module information.
func (*Limit) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.mesh_limit",
		New: func() caddy.Module { return new(Limit) },
	}
}

// Provision fills defaults and prepares the per-key state.
func (l *Limit) Provision(ctx caddy.Context) error {
	if err := l.Validate(); err != nil {
		return err
	}
	l.perSecond, _ = parseRate(l.Rate)
	if l.Burst == 0 {
		l.Burst = max(1, int(l.perSecond))
	}
	if l.QueueTimeout == 0 {
		l.QueueTimeout = caddy.Duration(time.Second)
	}
	l.now = now
	// A key idle long enough to refill its bucket has nothing left to say.
	idleAfter := 10 * time.Second
	if l.perSecond > 0 {
		idleAfter = max(idleAfter, time.Duration(float64(l.Burst)/float64(l.perSecond)*float64(time.Second)))
	}
	l.buckets = newPerKey(ctx, l.Key, maxLimitKeys, idleAfter, l.newBucket)
	return nil
}

func (l *Limit) newBucket() *bucket {
	b := new(bucket)
	if l.perSecond > 0 {
		b.tokens = rate.NewLimiter(l.perSecond, l.Burst)
	}
	if l.Concurrency > 0 {
		b.slots = make(chan struct{}, l.Concurrency)
	}
	return b
}

// Validate rejects bad values, naming the field and the value.
func (l *Limit) Validate() error {
	if _, err := parseRate(l.Rate); err != nil {
		return err
	}
	switch {
	case l.Rate == "" && l.Concurrency == 0:
		return errors.New("mesh_limit: set a rate, a concurrency, or both")
	case l.Burst < 0:
		return fmt.Errorf("mesh_limit: burst %d: must not be negative", l.Burst)
	case l.Concurrency < 0:
		return fmt.Errorf("mesh_limit: concurrency %d: must not be negative", l.Concurrency)
	case l.Queue < 0:
		return fmt.Errorf("mesh_limit: queue %d: must not be negative", l.Queue)
	case l.Queue > 0 && l.Concurrency == 0:
		return fmt.Errorf("mesh_limit: queue %d: needs a concurrency to wait for", l.Queue)
	case l.QueueTimeout < 0:
		return fmt.Errorf("mesh_limit: queue_timeout %s: must not be negative", time.Duration(l.QueueTimeout))
	}
	return nil
}

// parseRate reads a rate such as 100/s, 6000/m, 1/h or 5/100ms as requests
// per second; an empty rate is 0.
func parseRate(s string) (rate.Limit, error) {
	if s == "" {
		return 0, nil
	}
	count, per, ok := strings.Cut(s, "/")
	n, err := strconv.ParseFloat(count, 64)
	if !ok || err != nil || n <= 0 || math.IsInf(n, 0) {
		return 0, fmt.Errorf("mesh_limit: rate %q: want requests per unit of time, such as 100/s", s)
	}
	unit := map[string]time.Duration{"s": time.Second, "m": time.Minute, "h": time.Hour}[per]
	if unit == 0 {
		if unit, err = caddy.ParseDuration(per); err != nil || unit <= 0 {
			return 0, fmt.Errorf("mesh_limit: rate %q: unknown unit of time %q", s, per)
		}
	}
	return rate.Limit(n / unit.Seconds()), nil
}

// ServeHTTP admits the request within its key's limits, or refuses it.
func (l *Limit) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	now := l.now()
	e := l.buckets.acquire(r, now)
	if e == nil {
		return refuse(w, http.StatusServiceUnavailable, time.Second, errTooManyKeys)
	}
	defer e.Release()
	b := e.Value
	if b.tokens != nil && !b.tokens.AllowN(now, 1) {
		return refuse(w, http.StatusTooManyRequests, b.untilToken(now), errRateExceeded)
	}
	if b.slots != nil {
		if err := l.enter(w, r, b); err != nil {
			return err
		}
		defer func() { <-b.slots }()
	}
	return next.ServeHTTP(w, r)
}

// untilToken is how long until the bucket holds a token again.
func (b *bucket) untilToken(now time.Time) time.Duration {
	missing := 1 - b.tokens.TokensAt(now)
	return time.Duration(missing / float64(b.tokens.Limit()) * float64(time.Second))
}

// enter takes a place in flight, waiting in the queue if there is room.
func (l *Limit) enter(w http.ResponseWriter, r *http.Request, b *bucket) error {
	select {
	case b.slots <- struct{}{}:
		return nil
	default:
	}
	if int(b.waiting.Add(1)) > l.Queue {
		b.waiting.Add(-1)
		return refuse(w, http.StatusServiceUnavailable, time.Duration(l.QueueTimeout), errQueueFull)
	}
	defer b.waiting.Add(-1)
	timeout := time.NewTimer(time.Duration(l.QueueTimeout))
	defer timeout.Stop()
	select {
	case b.slots <- struct{}{}:
		return nil
	case <-timeout.C:
		return refuse(w, http.StatusServiceUnavailable, time.Duration(l.QueueTimeout), errQueueTimeout)
	case <-r.Context().Done():
		return caddyhttp.Error(499, r.Context().Err()) // the client left: its place is free
	}
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Limit)(nil)
	_ caddy.Validator             = (*Limit)(nil)
	_ caddyhttp.MiddlewareHandler = (*Limit)(nil)
)
