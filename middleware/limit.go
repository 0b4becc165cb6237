package middleware

import (
	"cmp"
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

	"github.com/caddymesh/caddymesh/internal/bounds"
	"github.com/caddymesh/caddymesh/internal/validate"
)

func init() {
	caddy.RegisterModule(new(Limit))
}

// maxLimitKeys caps the keys a limit keeps, so that a flood of distinct
// keys cannot exhaust memory.
const maxLimitKeys = 1 << 16

// Bounds of a limit's options: a rate from one a day to a billion a
// second, a burst up to a second of that, other counts up to a million,
// a queue wait up to 1h.
const (
	minRate         = rate.Limit(1.0 / (24 * 60 * 60))
	maxRate         = rate.Limit(1_000_000_000)
	maxLimitCount   = 1_000_000
	minQueueTimeout = time.Millisecond
	maxQueueTimeout = time.Hour
)

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
	// or 5/100ms; from 1/24h to 1000000000/s. Default: no rate limit.
	Rate string `json:"rate,omitempty"`

	// Requests allowed at once above the rate, from 1 to 1,000,000,000.
	// Default: one second's worth of the rate, at least 1.
	Burst int `json:"burst,omitempty"`

	// Requests in flight at most, from 1 to 1,000,000. Default: no cap.
	Concurrency int `json:"concurrency,omitempty"`

	// Requests that may wait for a place when concurrency is reached, up
	// to 1,000,000; beyond, they are refused. Default: 0.
	Queue int `json:"queue,omitempty"`

	// How long a request may wait in the queue, from 1ms to 1h; only with
	// a queue. Default: 1s.
	QueueTimeout caddy.Duration `json:"queue_timeout,omitempty"`

	perSecond rate.Limit
	buckets   *perKey[*bucket]
	now       func() time.Time
	validated validate.Once // Validate's answer, for Caddy's call after Provision
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
	if l.QueueTimeout == 0 && l.Queue > 0 {
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
// Provision calls it before acting on them; its checks run once.
func (l *Limit) Validate() error { return l.validated.Do(l.check) }

// check makes Validate's checks.
func (l *Limit) check() error {
	if _, err := parseRate(l.Rate); err != nil {
		return err
	}
	switch {
	case l.Rate == "" && l.Concurrency == 0:
		return errors.New("mesh_limit: set a rate, a concurrency, or both")
	case l.Queue > 0 && l.Concurrency == 0:
		return fmt.Errorf("mesh_limit: queue %d: needs a concurrency to wait for", l.Queue)
	case l.QueueTimeout != 0 && l.Queue == 0:
		return fmt.Errorf("mesh_limit: queue_timeout %s: needs a queue to wait in", time.Duration(l.QueueTimeout))
	}
	if err := cmp.Or(
		bounds.CheckOrZero("burst", l.Burst, 1, int(maxRate)), // a second of the fastest rate
		bounds.CheckOrZero("concurrency", l.Concurrency, 1, maxLimitCount),
		bounds.Check("queue", l.Queue, 0, maxLimitCount),
		bounds.DurationOrZero("queue_timeout", l.QueueTimeout, minQueueTimeout, maxQueueTimeout),
	); err != nil {
		return fmt.Errorf("mesh_limit: %w", err)
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
	perSecond := rate.Limit(n / unit.Seconds())
	if perSecond < minRate || perSecond > maxRate {
		return 0, fmt.Errorf("mesh_limit: rate %q: must be from 1/24h to %d/s", s, int(maxRate))
	}
	return perSecond, nil
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
