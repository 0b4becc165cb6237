package discovery

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddymesh/caddymesh/internal/consul"
	"github.com/caddymesh/caddymesh/internal/pool"
	"github.com/caddymesh/caddymesh/internal/svcname"
)

// Defaults of a source whose service name has placeholders.
const (
	defaultMaxServices = 256
	defaultIdleTimeout = 10 * time.Minute
)

// serviceWatch is what a source watches of one service: a shared watcher
// per datacenter, in failover order.
type serviceWatch struct {
	service        string
	watchers       []*consul.HealthWatch
	keys           []consul.HealthKey // what to give back to the registry
	panicThreshold int
	panicking      atomic.Bool
	logger         *zap.Logger
}

// release lets go of the watchers; the last user of one stops it.
func (sw *serviceWatch) release() {
	for _, key := range sw.keys {
		consul.HealthWatches.Release(key)
	}
	sw.keys = nil
}

// awaitFirstAnswers waits until every watcher has had its first try at
// Consul, for at most timeout. A failed try does not hold the caller up:
// Consul is down, and GetUpstreams errors (so Caddy uses any static
// upstreams) until it answers.
func (sw *serviceWatch) awaitFirstAnswers(ctx context.Context, timeout time.Duration) {
	if !consul.AwaitFirstTries(ctx, timeout, sw.watchers...) && ctx.Err() == nil {
		sw.logger.Warn("consul has not answered yet; starting without instances",
			zap.String("service", sw.service), zap.Duration("waited", timeout))
	}
}

// noAnswer is GetUpstreams' error while no datacenter has answered.
func (sw *serviceWatch) noAnswer() error {
	return fmt.Errorf("consul has not answered yet for service %q", sw.service)
}

// choose picks the snapshot to serve: that of the first datacenter with a
// healthy instance, preferring one whose last instances are not merely held
// (hold_last), or, when none has one, of the first where panic mode finds
// instances; nil when no datacenter has answered yet.
func (sw *serviceWatch) choose() *pool.Snapshot {
	var first, held *consul.Answer
	for _, w := range sw.watchers {
		a := w.Current() // one snapshot: instances and hold together
		if a == nil {
			continue
		}
		if first == nil {
			first = a
		}
		if len(a.Healthy.Instances) > 0 {
			if !a.Held() {
				return sw.servable(a)
			}
			held = cmp.Or(held, a)
		}
	}
	if held != nil {
		return sw.servable(held)
	}
	for _, w := range sw.watchers {
		if a := w.Current(); a != nil && sw.panics(a) {
			return sw.servable(a)
		}
	}
	if first == nil {
		return nil
	}
	return first.Healthy
}

// servable returns a's healthy instances, or all of them in panic mode.
func (sw *serviceWatch) servable(a *consul.Answer) *pool.Snapshot {
	panicking := sw.panics(a)
	if sw.panicking.Load() != panicking && sw.panicking.CompareAndSwap(!panicking, panicking) {
		sw.logPanic(a, panicking)
	}
	if panicking {
		return a.All
	}
	return a.Healthy
}

// panics reports whether fewer than the panic threshold's percent of a's
// instances are healthy.
func (sw *serviceWatch) panics(a *consul.Answer) bool {
	return len(a.Healthy.Instances)*100 < sw.panicThreshold*len(a.All.Instances)
}

func (sw *serviceWatch) logPanic(a *consul.Answer, panicking bool) {
	fields := []zap.Field{
		zap.String("service", sw.service),
		zap.Int("healthy", len(a.Healthy.Instances)),
		zap.Int("total", len(a.All.Instances)),
		zap.Int("panic_threshold", sw.panicThreshold),
	}
	if panicking {
		sw.logger.Warn("too few healthy instances: panic mode, sending traffic to all instances", fields...)
		return
	}
	sw.logger.Info("enough healthy instances again: panic mode over", fields...)
}

// lazyServices are the services of a source whose service name has
// placeholders: each is watched from the first request for it, at most
// max_services at once, and let go once unused for idle_timeout. Requests
// read the services without a lock or a clock: the map is replaced whole
// on a change, and idleness is counted in sweeps.
type lazyServices struct {
	source     *ConsulUpstreams
	ctx        context.Context
	byName     atomic.Pointer[map[string]*lazyService]
	mu         sync.Mutex  // serializes changes to byName
	closed     bool        // the source is cleaned up: no new watches
	full       atomic.Bool // at max_services, logged once each time
	sweeps     atomic.Int64
	idleSweeps int64 // how many sweeps without a use make a service idle
}

// lazyService is one service of lazyServices.
type lazyService struct {
	watch    *serviceWatch
	ready    chan struct{} // closed once watched and first answered, or timed out
	lastUsed atomic.Int64  // the sweep count at its last use
}

// newLazyServices returns the lazy services of source, whose idle ones a
// goroutine lets go until ctx's config stops.
func newLazyServices(ctx caddy.Context, source *ConsulUpstreams) *lazyServices {
	ls := &lazyServices{source: source, ctx: ctx}
	ls.byName.Store(&map[string]*lazyService{})
	idle := time.Duration(source.IdleTimeout)
	interval := min(idle/4, time.Minute)
	ls.idleSweeps = int64((idle + interval - 1) / interval)
	go ls.sweepEvery(ctx, interval)
	return ls
}

// get returns the watch of the service named name, starting it for the
// first request, and waiting for its first answer; nil when name breaks
// the service-name rule (package svcname), when max_services are watched
// already, or when the client left while waiting.
func (ls *lazyServices) get(r *http.Request, name string) *serviceWatch {
	if !svcname.Valid(name) {
		return nil
	}
	s := (*ls.byName.Load())[name]
	if s == nil {
		if s = ls.start(name); s == nil {
			return nil
		}
	}
	s.touch(ls.sweeps.Load())
	select {
	case <-s.ready:
		return s.watch
	case <-r.Context().Done():
		return nil
	}
}

// isReady reports whether the service's watch has started (and so whether
// its watch may be read).
func (s *lazyService) isReady() bool {
	select {
	case <-s.ready:
		return true
	default:
		return false
	}
}

// touch records a use during the current sweep, writing only the first
// time, so that a service in heavy use is not written to from every core
// on every request.
func (s *lazyService) touch(sweep int64) {
	if s.lastUsed.Load() != sweep {
		s.lastUsed.Store(sweep)
	}
}

// change replaces byName with a copy that edit changed; under ls.mu.
func (ls *lazyServices) change(edit func(map[string]*lazyService)) {
	next := maps.Clone(*ls.byName.Load())
	edit(next)
	ls.byName.Store(&next)
}

// start watches the service named name, unless max_services are watched
// already; it waits for Consul's first answer, for resolve_timeout.
func (ls *lazyServices) start(name string) *lazyService {
	ls.mu.Lock()
	if s := (*ls.byName.Load())[name]; s != nil { // started meanwhile
		ls.mu.Unlock()
		return s
	}
	if ls.closed || len(*ls.byName.Load()) >= ls.source.MaxServices {
		ls.mu.Unlock()
		ls.noteFull(name)
		return nil
	}
	s := &lazyService{ready: make(chan struct{})}
	s.lastUsed.Store(ls.sweeps.Load())
	ls.change(func(m map[string]*lazyService) { m[name] = s })
	ls.mu.Unlock()
	defer close(s.ready)

	watch, err := ls.source.watch(name)
	if err != nil {
		ls.source.logger.Error("cannot watch service", zap.String("service", name), zap.Error(err))
		ls.mu.Lock()
		ls.change(func(m map[string]*lazyService) { delete(m, name) })
		ls.mu.Unlock()
		return nil
	}
	s.watch = watch
	watch.awaitFirstAnswers(ls.ctx, time.Duration(ls.source.ResolveTimeout))
	return s
}

// noteFull warns, once until services are let go again, that a request
// named a service beyond max_services.
func (ls *lazyServices) noteFull(name string) {
	if !ls.full.Swap(true) {
		ls.source.logger.Warn("max_services are watched already: requests for other services get no upstreams until some are idle",
			zap.Int("max_services", ls.source.MaxServices), zap.String("refused", name))
	}
}

func (ls *lazyServices) sweepEvery(ctx context.Context, interval time.Duration) {
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-ticker.C:
			ls.sweep()
		case <-ctx.Done():
			return
		}
	}
}

// sweep lets go of the services unused for idle_timeout: for idleSweeps
// sweeps.
func (ls *lazyServices) sweep() {
	sweep := ls.sweeps.Add(1)
	idle := make(map[string]*lazyService)
	ls.mu.Lock()
	for name, s := range *ls.byName.Load() {
		if s.isReady() && sweep-s.lastUsed.Load() > ls.idleSweeps {
			idle[name] = s
		}
	}
	if len(idle) > 0 {
		ls.change(func(m map[string]*lazyService) {
			maps.DeleteFunc(m, func(name string, _ *lazyService) bool { return idle[name] != nil })
		})
		ls.full.Store(false)
	}
	ls.mu.Unlock()
	for _, s := range idle {
		s.watch.release()
	}
}

// releaseAll lets go of every service, for good.
func (ls *lazyServices) releaseAll() error {
	ls.mu.Lock()
	ls.closed = true
	all := *ls.byName.Load()
	ls.byName.Store(&map[string]*lazyService{})
	ls.mu.Unlock()
	for _, s := range all {
		<-s.ready
		if s.watch != nil {
			s.watch.release()
		}
	}
	return nil
}
