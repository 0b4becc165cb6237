package discovery

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"
)

// chainWatches holds one chain watch per chain key, shared by every source
// and config that follows the same chain; a chain watch stops when its
// last user is cleaned up.
var chainWatches = caddy.NewUsagePool()

// targetSettings are a source's settings that every target's health watch
// takes, besides the target's own service, datacenter and subset filter.
type targetSettings struct {
	filter         string // the source's tags and filter, combined
	health         string
	near           string
	consistency    string
	wait           time.Duration
	holdLast       time.Duration
	panicThreshold int
}

// chainKey is everything that makes two chain watches differ.
type chainKey struct {
	endpoint
	service    string
	datacenter string // the chain is compiled for it
	targets    targetSettings
}

// chainWatch keeps the compiled discovery chain of a service current, with
// blocking queries of /v1/discovery-chain/<service>, and holds a shared
// health watch per target. Requests read current.
type chainWatch struct {
	*poller[*compiledChain]
	key     chainKey
	conn    connection
	current atomic.Pointer[evaluator]
	chain   atomic.Pointer[compiledChain] // as Consul compiled it, for the admin API
	logger  *zap.Logger

	ctx    context.Context // ends when the watch stops: waits for targets end
	cancel context.CancelFunc

	// the poller goroutine's own state
	targets map[watchKey]*serviceWatch // the health watches held
	noted   map[string]bool            // what was logged as not honoured
}

// newChainWatch returns a chain watch ready to start.
func newChainWatch(key chainKey, conn connection, logger *zap.Logger) (*chainWatch, error) {
	p, err := newPoller[*compiledChain](key.service, key.datacenter, conn)
	if err != nil {
		return nil, err
	}
	cw := &chainWatch{poller: p, key: key, conn: conn, logger: logger,
		targets: map[watchKey]*serviceWatch{}, noted: map[string]bool{}}
	cw.ctx, cw.cancel = context.WithCancel(context.Background())
	p.query, p.wait, p.apply = cw.query, cw.waitTime, cw.apply
	return cw, nil
}

// takeChainWatch returns the shared chain watch of key, starting it if
// nobody runs it yet, and waits for its first answer.
func takeChainWatch(ctx context.Context, key chainKey, conn connection, logger *zap.Logger) (*chainWatch, error) {
	value, _, err := chainWatches.LoadOrNew(key, func() (caddy.Destructor, error) {
		cw, err := newChainWatch(key, conn, logger)
		if err != nil {
			return nil, err
		}
		return cw, cw.start()
	})
	if err != nil {
		return nil, err
	}
	cw := value.(*chainWatch)
	select {
	case <-cw.tried:
	case <-time.After(firstAnswerTimeout):
		logger.Warn("consul has not answered with the discovery chain yet", zap.String("service", key.service))
	case <-ctx.Done():
	}
	return cw, nil
}

// releaseChainWatch lets go of the chain watch of key.
func releaseChainWatch(key chainKey) error {
	_, err := chainWatches.Delete(key)
	return err
}

// Destruct stops the watch and lets go of its targets' health watches.
func (cw *chainWatch) Destruct() error {
	cw.cancel()
	cw.stop()
	var errs []error
	for key, sw := range cw.targets {
		errs = append(errs, sw.release())
		delete(cw.targets, key)
	}
	return errors.Join(errs...)
}

// query asks Consul for the chain compiled in the key's datacenter.
func (cw *chainWatch) query(_ context.Context, q *api.QueryOptions) (*compiledChain, *api.QueryMeta, error) {
	q.AllowStale = cw.key.targets.consistency == consistencyStale && !cw.asksLeader()
	q.UseCache = cw.key.targets.consistency == consistencyCached && !cw.asksLeader()
	q.Datacenter = cw.key.datacenter
	var out struct{ Chain *compiledChain }
	meta, err := cw.client.Raw().Query("/v1/discovery-chain/"+cw.key.service, &out, q)
	if err != nil {
		return nil, nil, err
	}
	return out.Chain, meta, nil
}

func (cw *chainWatch) waitTime() time.Duration { return cw.key.targets.wait }

// apply compiles a new version of the chain, taking the health watches of
// new targets (and waiting briefly for their first answers, so that
// traffic does not move to a target before its instances are known), then
// publishes it and lets go of the targets it no longer has. A chain that
// does not compile is logged and the last one kept.
func (cw *chainWatch) apply(chain *compiledChain) {
	if reflect.DeepEqual(chain, cw.chain.Load()) {
		return
	}
	used := map[watchKey]*serviceWatch{}
	var fresh []*serviceWatch
	ev, err := compileChain(chain, func(def *chainTargetDef) (targetPool, error) {
		key := cw.targetKey(def)
		sw, ok := used[key]
		if !ok {
			if sw, ok = cw.targets[key]; !ok {
				var err error
				if sw, err = takeServiceWatch(cw.conn, key, cw.key.targets.panicThreshold, cw.logger); err != nil {
					return nil, err
				}
				fresh = append(fresh, sw)
			}
			used[key] = sw
		}
		return sw, nil
	}, metrics.chainRequests)
	if err != nil {
		for _, sw := range fresh {
			_ = sw.release()
		}
		cw.log().Error("discovery chain not applied: keeping the last one", zap.Error(err))
		return
	}
	for _, sw := range fresh {
		sw.awaitFirstAnswers(cw.ctx, firstAnswerTimeout)
	}
	cw.current.Store(ev)
	cw.chain.Store(chain)
	cw.notify()
	for key, sw := range cw.targets {
		if used[key] == nil {
			_ = sw.release()
		}
	}
	cw.targets = used
	cw.logNotHonoured(ev)
	cw.log().Debug("discovery chain changed", zap.Int("routes", len(ev.routes)), zap.Int("targets", len(ev.targets)))
}

// targetKey is the health watch key of a target: the source's settings,
// the target's service and datacenter, its subset's filter beside the
// source's, and passing instances only when the subset says OnlyPassing.
func (cw *chainWatch) targetKey(def *chainTargetDef) watchKey {
	s := cw.key.targets
	key := watchKey{
		endpoint: cw.key.endpoint, service: def.Service, datacenter: def.Datacenter,
		filter: andFilters(s.filter, def.Subset.Filter), health: s.health, near: s.near,
		consistency: s.consistency, wait: s.wait, holdLast: s.holdLast,
	}
	if def.Subset.OnlyPassing {
		key.health = healthPassing
	}
	return key
}

// logNotHonoured logs, once per watch, each thing of the chain that Caddy
// cannot honour.
func (cw *chainWatch) logNotHonoured(ev *evaluator) {
	for _, what := range ev.notHonoured {
		if !cw.noted[what] {
			cw.noted[what] = true
			cw.log().Warn("discovery chain: not honoured by caddymesh", zap.String("what", what))
		}
	}
}

// andFilters combines two Consul filters; either may be empty.
func andFilters(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	default:
		return fmt.Sprintf("(%s) and (%s)", a, b)
	}
}

// takeServiceWatch takes the shared health watch of key, starting it if
// nobody runs it yet, as a serviceWatch of one datacenter.
func takeServiceWatch(conn connection, key watchKey, panicThreshold int, logger *zap.Logger) (*serviceWatch, error) {
	value, _, err := watchers.LoadOrNew(key, func() (caddy.Destructor, error) {
		w, err := newWatcher(key, conn)
		if err != nil {
			return nil, err
		}
		w.userFilter = key.filter
		return w, w.start()
	})
	if err != nil {
		return nil, err
	}
	return &serviceWatch{service: key.service, panicThreshold: panicThreshold, logger: logger,
		keys: []watchKey{key}, watchers: []*watcher{value.(*watcher)}}, nil
}
