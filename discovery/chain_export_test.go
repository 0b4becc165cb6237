package discovery

import (
	"net/http"
	"sync/atomic"

	"github.com/hashicorp/consul/api"

	"github.com/caddymesh/caddymesh/internal/consul"
	"github.com/caddymesh/caddymesh/internal/pool"
	"github.com/caddymesh/caddymesh/internal/urlpath"
)

// ChainProbe evaluates a discovery chain that a real Consul compiled, with
// pools whose number of healthy instances the test sets: the evaluator's
// behaviour without health watches.
type ChainProbe struct {
	ev    *evaluator
	pools map[string]*probePool
}

type probePool struct{ snap atomic.Pointer[pool.Snapshot] }

func (p *probePool) choose() *pool.Snapshot { return p.snap.Load() }

func (p *probePool) setHealthy(n int) {
	snap := &pool.Snapshot{}
	for range n {
		snap.Instances = append(snap.Instances, pool.Instance{Dial: "127.0.0.1:9"})
	}
	p.snap.Store(snap)
}

// NewChainProbe fetches the chain of service from Consul and compiles it;
// every target starts with one healthy instance.
func NewChainProbe(client *api.Client, service string) (*ChainProbe, error) {
	var out struct{ Chain *consul.CompiledChain }
	if _, err := client.Raw().Query("/v1/discovery-chain/"+service, &out, nil); err != nil {
		return nil, err
	}
	probe := &ChainProbe{pools: map[string]*probePool{}}
	ev, err := compileChain(out.Chain, func(def *consul.ChainTarget) (targetPool, error) {
		p := &probePool{}
		p.setHealthy(1)
		probe.pools[def.ID] = p
		return p, nil
	}, nil)
	probe.ev = ev
	return probe, err
}

// SetHealthy sets how many healthy instances target has.
func (p *ChainProbe) SetHealthy(target string, n int) { p.pools[target].setHealthy(n) }

// Targets are the IDs of the chain's targets.
func (p *ChainProbe) Targets() []string {
	var ids []string
	for _, t := range p.ev.targets {
		ids = append(ids, t.id)
	}
	return ids
}

// Direct reports whether the chain has nothing to evaluate.
func (p *ChainProbe) Direct() bool { return p.ev.direct != nil }

// NotHonoured is what Caddy cannot honour of the chain.
func (p *ChainProbe) NotHonoured() []string { return p.ev.notHonoured }

// Choose evaluates the chain on r with the splitter's roll (in
// hundredths of a percent), without the actions, and returns the target
// chosen; "" when no route matches.
func (p *ChainProbe) Choose(r *http.Request, roll uint32) string {
	leg, _ := p.leg(r, roll)
	if leg == nil {
		return ""
	}
	target, _ := leg.resolver.choose()
	return target.id
}

// Evaluate is Choose that also does the actions on r.
func (p *ChainProbe) Evaluate(r *http.Request, roll uint32) string {
	leg, path := p.leg(r, roll)
	if leg == nil || leg.applyTo(r, path) != nil {
		return ""
	}
	target, _ := leg.resolver.choose()
	return target.id
}

func (p *ChainProbe) leg(r *http.Request, roll uint32) (*chainLeg, string) {
	path, _, err := urlpath.Normalize(r.URL.EscapedPath(), urlpath.KeepUnchanged)
	if err != nil {
		return nil, ""
	}
	route := p.ev.route(r, path)
	if route == nil {
		return nil, ""
	}
	return route.pick(roll), path
}
