package discovery

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddymesh/caddymesh/internal/consul"
	"github.com/caddymesh/caddymesh/internal/meshapp"
	"github.com/caddymesh/caddymesh/internal/pool"
	"github.com/caddymesh/caddymesh/internal/urlpath"
)

// targetSettings are a source's settings that every target's health watch
// takes, besides the target's own service, datacenter and subset filter.
type targetSettings struct {
	filter         string // the source's tags and filter, combined
	tags           []string
	userFilter     string
	health         string
	near           string
	consistency    string
	wait           time.Duration
	holdLast       time.Duration
	panicThreshold int
	connect        bool // instances from Consul's Connect catalog, with their identities
}

// chainFollower is what a source with chain follows: the shared watch of
// its service's discovery chain, and that chain compiled for requests (an
// evaluator), with the shared health watch of each target. On each change
// of the chain it compiles it again, on a goroutine of its own.
type chainFollower struct {
	key      consul.ChainKey
	watch    *consul.ChainWatch
	conn     consul.Connection
	settings targetSettings
	slashes  urlpath.EscapedSlashes // how paths are normalized before matching
	logger   *zap.Logger
	current  atomic.Pointer[evaluator]
	// responseHeadersDropped is set once a request whose leg has response
	// header actions came without mesh_chain.
	responseHeadersDropped atomic.Bool
	changes                chan struct{}
	cancel                 context.CancelFunc
	done                   chan struct{}

	// the goroutine's own state (Provision's before the goroutine starts)
	compiledFrom *consul.CompiledChain
	targets      map[consul.HealthKey]*serviceWatch // the health watches held
}

// notHonouredLogged holds what was logged as not honoured, by service, so
// that each is logged once, whatever the reloads.
var notHonouredLogged sync.Map

// provisionChain follows the chain of the source's service, compiled for
// its first datacenter, waiting briefly for Consul's first answers.
func (cu *ConsulUpstreams) provisionChain(ctx caddy.Context) error {
	slashes, err := meshapp.EscapedSlashes(ctx)
	if err != nil {
		return err
	}
	if err := consul.RegisterMetrics(ctx, chainRequests); err != nil {
		return err
	}
	key := consul.ChainKey{Endpoint: cu.conn.Endpoint, Service: cu.Service, Datacenter: cu.datacenters[0],
		Consistency: cu.Consistency, Wait: time.Duration(cu.Wait)}
	watch, err := consul.TakeChain(key, cu.conn)
	if err != nil {
		return err
	}
	f := &chainFollower{key: key, watch: watch, conn: cu.conn, slashes: slashes, logger: cu.logger,
		changes: make(chan struct{}, 1), targets: map[consul.HealthKey]*serviceWatch{},
		settings: targetSettings{filter: cu.filter, tags: cu.Tags, userFilter: cu.Filter, health: cu.Health, near: cu.Near,
			consistency: cu.Consistency, wait: time.Duration(cu.Wait), holdLast: time.Duration(*cu.HoldLast), panicThreshold: cu.PanicThreshold, connect: cu.Connect}}
	watch.Subscribe(f.changes) // before the first look: no change is missed
	if !consul.AwaitFirstTries(ctx, firstAnswerTimeout, watch) && ctx.Err() == nil {
		cu.logger.Warn("consul has not answered with the discovery chain yet", zap.String("service", cu.Service))
	}
	f.update(ctx)
	runCtx, cancel := context.WithCancel(context.Background())
	f.cancel, f.done = cancel, make(chan struct{})
	go f.run(runCtx)
	cu.chain = f
	followers.Add(f)
	return nil
}

// run compiles the chain again on each change, until the source is
// cleaned up.
func (f *chainFollower) run(ctx context.Context) {
	defer close(f.done)
	for {
		select {
		case <-ctx.Done():
			return
		case <-f.changes:
			f.update(ctx)
		}
	}
}

// release stops following: it lets go of the targets' health watches and
// of the chain watch. A request still running keeps the last evaluator.
func (f *chainFollower) release() {
	followers.Remove(f)
	f.watch.Unsubscribe(f.changes)
	f.cancel()
	<-f.done
	for key, sw := range f.targets {
		sw.release()
		delete(f.targets, key)
	}
	consul.Chains.Release(f.key)
}

// update compiles the chain if it changed, taking the health watches of
// new targets and waiting briefly for their first answers (so that traffic
// does not move to a target before its instances are known); then it
// publishes the evaluator and lets go of the targets it no longer has. A
// chain that does not compile is logged, and the last one kept.
func (f *chainFollower) update(ctx context.Context) {
	chain := f.watch.Chain()
	if chain == nil || chain == f.compiledFrom {
		return
	}
	used := map[consul.HealthKey]*serviceWatch{}
	var fresh []*serviceWatch
	var started []*consul.HealthWatch
	ev, err := compileChain(chain, func(def *consul.ChainTarget) (targetPool, error) {
		if def.Peer != "" || def.External {
			return noInstances{}, nil // listed as not honoured
		}
		key := f.targetKey(def)
		if sw, ok := used[key]; ok {
			return sw, nil
		}
		sw, ok := f.targets[key]
		if !ok {
			w, err := takeHealthWatch(key, f.conn, f.settings.tags, f.settings.userFilter)
			if err != nil {
				return nil, err
			}
			sw = &serviceWatch{service: key.Service, panicThreshold: f.settings.panicThreshold, logger: f.logger,
				keys: []consul.HealthKey{key}, watchers: []*consul.HealthWatch{w}}
			fresh, started = append(fresh, sw), append(started, w)
		}
		used[key] = sw
		return sw, nil
	}, chainRequests)
	if err != nil {
		for _, sw := range fresh {
			sw.release()
		}
		f.logger.Error("discovery chain not applied: keeping the last one", zap.String("service", f.key.Service), zap.Error(err))
		return
	}
	if !consul.AwaitFirstTries(ctx, firstAnswerTimeout, started...) && ctx.Err() == nil {
		f.logger.Warn("consul has not answered yet for every new chain target", zap.String("service", f.key.Service))
	}
	ev.owner = f
	f.current.Store(ev)
	f.compiledFrom = chain
	for key, sw := range f.targets {
		if used[key] == nil {
			sw.release()
		}
	}
	f.targets = used
	f.logNotHonoured(ev)
}

// targetKey is the health watch key of a target: the source's settings,
// the target's service and datacenter, its subset's filter beside the
// source's, passing instances only when the subset says OnlyPassing, and
// Consul's Connect catalog when the source has connect.
func (f *chainFollower) targetKey(def *consul.ChainTarget) consul.HealthKey {
	s := f.settings
	key := consul.HealthKey{
		Endpoint: f.key.Endpoint, Service: def.Service, Datacenter: def.Datacenter,
		Filter: andFilters(s.filter, def.Subset.Filter), Health: s.health, Near: s.near,
		Consistency: s.consistency, Wait: s.wait, HoldLast: s.holdLast, Connect: s.connect,
	}
	if def.Subset.OnlyPassing {
		key.Health = consul.HealthPassing
	}
	return key
}

// logNotHonoured logs, once per service, each thing of the chain that
// Caddy cannot honour.
func (f *chainFollower) logNotHonoured(ev *evaluator) {
	for _, what := range ev.notHonoured {
		if _, logged := notHonouredLogged.LoadOrStore(f.key.Service+"\x00"+what, true); !logged {
			f.logger.Warn("discovery chain: not honoured by caddymesh", zap.String("service", f.key.Service), zap.String("what", what))
		}
	}
}

// noInstances is the pool of a target caddymesh cannot reach: a cluster
// peer's, or one behind a terminating gateway.
type noInstances struct{}

func (noInstances) choose() *pool.Snapshot { return emptySnapshot }

var emptySnapshot = pool.NewSnapshot(nil)

// andFilters combines two Consul filters; either may be empty.
func andFilters(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	default:
		return "(" + a + ") and (" + b + ")"
	}
}
