package middleware

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/caddymesh/caddymesh/internal/bounds"
	"github.com/caddymesh/caddymesh/internal/keyed"
	"github.com/caddymesh/caddymesh/internal/running"
	"github.com/caddymesh/caddymesh/internal/validate"
)

func init() {
	caddy.RegisterModule(new(Breaker))
}

// maxBreakerKeys caps a breaker's circuits, and so the series of its
// state metric.
const maxBreakerKeys = 1024

// Bounds of a breaker's options. The window is counted in ten buckets, so
// its bucket is at least 10ms.
const (
	maxBreakerCount  = 1_000_000
	maxHalfOpen      = 1000
	minWindow        = 100 * time.Millisecond
	maxBreakerPeriod = time.Hour
)

// Breaker is a circuit breaker: when what it wraps (reverse_proxy to a
// dependency, say) fails too often, it stops calling it for a while and
// answers 503 with Retry-After at once, then lets a few probes through and
// closes again when they succeed. A circuit opens when, within the window,
// at least min_requests were seen and failure_ratio of them failed, or
// after consecutive_failures failures in a row. Failures are errors from
// the next handler (a dial failure, say), responses whose status is in
// failure_status, and responses slower than latency_threshold.
//
// Each key has a circuit of its own. The request path never blocks, sleeps
// or takes a lock: circuits change state by compare-and-swap. State
// changes are logged once, emitted as the events mesh.breaker_open and
// mesh.breaker_closed (data: key), and exported as the metric
// caddy_mesh_breaker_state{key} (0 closed, 1 open, 2 half-open).
type Breaker struct {
	// Requests with the same key share a circuit: any placeholder, such as
	// {http.request.host}. Default: one circuit for the handler.
	Key string `json:"key,omitempty"`

	// Share of the requests in the window that must fail to open the
	// circuit, from 0 (exclusive) to 1. Default: 0.5.
	FailureRatio float64 `json:"failure_ratio,omitempty"`

	// Requests the window must hold before failure_ratio applies, from 1
	// to 1,000,000. Default: 20.
	MinRequests int `json:"min_requests,omitempty"`

	// How far back failure_ratio looks, from 100ms to 1h. Default: 10s.
	Window caddy.Duration `json:"window,omitempty"`

	// Open the circuit after this many failures in a row, whatever the
	// ratio; up to 1,000,000. Default: 0, off.
	ConsecutiveFailures int `json:"consecutive_failures,omitempty"`

	// Response statuses that count as failures: codes such as 429, or
	// classes such as 5xx. Default: 5xx.
	FailureStatus []string `json:"failure_status,omitempty"`

	// Responses slower than this count as failures; from 1ms to 1h.
	// Default: 0, off.
	LatencyThreshold caddy.Duration `json:"latency_threshold,omitempty"`

	// How long an open circuit refuses before letting probes through,
	// from 1ms to 1h. Default: 30s.
	OpenFor caddy.Duration `json:"open_for,omitempty"`

	// Probes let through while half-open; the circuit closes when they all
	// succeed, and opens again at the first failure. From 1 to 1000.
	// Default: 3.
	HalfOpenRequests int `json:"half_open_requests,omitempty"`

	settings     circuitSettings
	failureCodes statusSet
	circuits     *perKey[*circuit]
	now          func() time.Time // the clock: now, or a test's
	events       *caddyevents.App
	ctx          caddy.Context
	logger       *zap.Logger
	validated    validate.Once // Validate's answer, for Caddy's call after Provision
}

var (
	errCircuitOpen  = errors.New("mesh_breaker: circuit open")
	errTooManyKeys  = errors.New("too many keys in use")
	breakerDefaults = Breaker{
		FailureRatio: 0.5, MinRequests: 20, Window: caddy.Duration(10 * time.Second),
		FailureStatus: []string{"5xx"}, OpenFor: caddy.Duration(30 * time.Second), HalfOpenRequests: 3,
	}
)

// CaddyModule returns the Caddy module information.
func (*Breaker) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.mesh_breaker",
		New: func() caddy.Module { return new(Breaker) },
	}
}

// Provision fills defaults and compiles the settings.
func (b *Breaker) Provision(ctx caddy.Context) error {
	b.ctx, b.logger, b.now = ctx, ctx.Logger(), now
	b.setDefaults()
	if err := b.Validate(); err != nil {
		return err
	}
	var err error
	if b.failureCodes, err = parseStatusSet(b.FailureStatus); err != nil {
		return err
	}
	b.settings = circuitSettings{
		failureRatio: b.FailureRatio, minRequests: int64(b.MinRequests),
		consecutiveFailures: int32(b.ConsecutiveFailures), window: time.Duration(b.Window),
		openFor: time.Duration(b.OpenFor), halfOpenRequests: int32(b.HalfOpenRequests),
	}
	// A key idle for a window and an open period has nothing left to say.
	idleAfter := time.Duration(b.Window) + time.Duration(b.OpenFor)
	b.circuits = newPerKey(ctx, b.Key, maxBreakerKeys, idleAfter, func() *circuit { return new(circuit) })
	if app, err := ctx.AppIfConfigured("events"); err == nil {
		b.events = app.(*caddyevents.App)
	}
	breakers.Add(b)
	return registerMetrics(ctx)
}

func (b *Breaker) setDefaults() {
	d := breakerDefaults
	if b.FailureRatio == 0 {
		b.FailureRatio = d.FailureRatio
	}
	if b.MinRequests == 0 {
		b.MinRequests = d.MinRequests
	}
	if b.Window == 0 {
		b.Window = d.Window
	}
	if len(b.FailureStatus) == 0 {
		b.FailureStatus = d.FailureStatus
	}
	if b.OpenFor == 0 {
		b.OpenFor = d.OpenFor
	}
	if b.HalfOpenRequests == 0 {
		b.HalfOpenRequests = d.HalfOpenRequests
	}
}

// Validate rejects bad values, naming the field and the value.
// Provision calls it before acting on them; its checks run once.
func (b *Breaker) Validate() error { return b.validated.Do(b.check) }

// check makes Validate's checks.
func (b *Breaker) check() error {
	if err := cmp.Or(
		bounds.Check("failure_ratio", b.FailureRatio, 0, 1),
		bounds.CheckOrZero("min_requests", b.MinRequests, 1, maxBreakerCount),
		bounds.DurationOrZero("window", b.Window, minWindow, maxBreakerPeriod),
		bounds.CheckOrZero("consecutive_failures", b.ConsecutiveFailures, 1, maxBreakerCount),
		bounds.DurationOrZero("latency_threshold", b.LatencyThreshold, time.Millisecond, maxBreakerPeriod),
		bounds.DurationOrZero("open_for", b.OpenFor, time.Millisecond, maxBreakerPeriod),
		bounds.CheckOrZero("half_open_requests", b.HalfOpenRequests, 1, maxHalfOpen),
	); err != nil {
		return fmt.Errorf("mesh_breaker: %w", err)
	}
	_, err := parseStatusSet(b.FailureStatus)
	return err
}

// Cleanup forgets the breaker for metrics.
func (b *Breaker) Cleanup() error {
	breakers.Remove(b)
	return nil
}

// ServeHTTP lets the request through unless its circuit is open, and
// counts its outcome.
func (b *Breaker) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	start := b.now()
	e := b.circuits.acquire(r, start)
	if e == nil {
		return refuse(w, http.StatusServiceUnavailable, time.Second, errTooManyKeys)
	}
	defer e.Release()
	c := e.Value
	if ok, wait := c.admit(start, &b.settings); !ok {
		return refuse(w, http.StatusServiceUnavailable, wait, errCircuitOpen)
	}
	rec := recordStatus(w)
	err := next.ServeHTTP(rec, r)
	status := rec.status
	rec.release()
	if errors.Is(err, context.Canceled) {
		return err // the client left: not the dependency's failure
	}
	end := b.now()
	if change := c.record(b.failed(err, status, end.Sub(start)), end, &b.settings); change != stayed {
		b.announce(e.Key(), change)
	}
	return err
}

// failed reports whether an outcome counts as a failure.
func (b *Breaker) failed(err error, status int, took time.Duration) bool {
	if err != nil {
		var handlerErr caddyhttp.HandlerError
		if !errors.As(err, &handlerErr) || handlerErr.StatusCode == 0 {
			return true
		}
		status = handlerErr.StatusCode
	}
	return b.failureCodes.has(status) || (b.LatencyThreshold > 0 && took > time.Duration(b.LatencyThreshold))
}

// announce logs a circuit's change and emits its event, without holding
// the request up.
func (b *Breaker) announce(key string, change transition) {
	name := "mesh.breaker_open"
	if change == opened {
		b.logger.Warn("circuit open: refusing requests", zap.String("key", key), zap.Duration("open_for", time.Duration(b.OpenFor)))
	} else {
		name = "mesh.breaker_closed"
		b.logger.Info("circuit closed: the probes succeeded", zap.String("key", key))
	}
	if b.events != nil {
		go b.events.Emit(b.ctx, name, map[string]any{"key": key})
	}
}

// refuse answers with status and a Retry-After of wait, as a Caddy HTTP
// error.
func refuse(w http.ResponseWriter, status int, wait time.Duration, err error) error {
	w.Header().Set("Retry-After", strconv.Itoa(int(max(1, math.Ceil(wait.Seconds())))))
	return caddyhttp.Error(status, err)
}

// statusSet is a set of HTTP statuses: classes (5xx) and codes (429).
type statusSet struct {
	classes [10]bool
	codes   []int
}

func parseStatusSet(specs []string) (statusSet, error) {
	var set statusSet
	for _, spec := range specs {
		if len(spec) == 3 && spec[0] >= '1' && spec[0] <= '5' && strings.EqualFold(spec[1:], "xx") {
			set.classes[spec[0]-'0'] = true
			continue
		}
		code, err := strconv.Atoi(spec)
		if err != nil || code < 100 || code > 599 {
			return set, fmt.Errorf("mesh_breaker: failure_status %q: must be a status code or class such as 5xx", spec)
		}
		set.codes = append(set.codes, code)
	}
	return set, nil
}

func (set statusSet) has(status int) bool {
	if status >= 100 && status < 1000 && set.classes[status/100] {
		return true
	}
	for _, code := range set.codes {
		if code == status {
			return true
		}
	}
	return false
}

// breakers are the breakers of the configs running, for metrics.
var breakers running.Set[*Breaker]

// circuitStates returns the state of every circuit, by key; a key several
// breakers share reports its worst.
func circuitStates() map[string]int32 {
	out := make(map[string]int32)
	for _, b := range breakers.All() {
		b.circuits.store.Range(func(e *keyed.Entry[*circuit]) {
			if state, seen := out[e.Key()]; !seen || severity(e.Value.state.Load()) > severity(state) {
				out[e.Key()] = e.Value.state.Load()
			}
		})
	}
	return out
}

// severity orders states from best to worst: closed, half-open, open.
func severity(state int32) int {
	return [...]int{closed: 0, halfOpen: 1, open: 2}[state]
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Breaker)(nil)
	_ caddy.Validator             = (*Breaker)(nil)
	_ caddy.CleanerUpper          = (*Breaker)(nil)
	_ caddyhttp.MiddlewareHandler = (*Breaker)(nil)
)
