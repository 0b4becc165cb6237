package lbpolicy

import (
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddymesh/caddymesh/internal/pool"
)

func init() {
	caddy.RegisterModule(new(SmoothWeighted))
}

// SmoothWeighted is nginx's smooth weighted round robin: each upstream gets
// requests in proportion to its weight, interleaved as evenly as possible
// (weights 5, 1, 1 on a, b, c give a a b a c a a), unlike Caddy's
// weighted_round_robin, which sends each upstream's share in a burst.
//
// An upstream's weight is its entry in weights, else its weight in Consul
// when it came from the consul source, else 1; weight 0 means never. An
// unavailable upstream (failing passive health checks, or at its request
// limit) is skipped, its share going to the others in proportion to their
// weights, and gets its share back with no burst when it is available
// again.
//
// The cycle is computed once per pool of upstreams (per Consul snapshot, or
// static pool); a pick is an atomic increment, with no lock and no
// allocation. Under concurrency, every k whole cycles give each upstream
// exactly k times its weight. From a large pool of the consul source it
// names the few upstreams of the next turns, so that Caddy need not
// prepare every one (see pool.Preselector).
type SmoothWeighted struct {
	// Weights of upstreams by dial address (host:port), from 0 to 1000.
	// They override Consul's weights. Default: Consul's weight, else 1.
	Weights Weights `json:"weights,omitempty"`

	schedules builtFor[*schedule]
}

// CaddyModule returns the Caddy module information.
func (*SmoothWeighted) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.selection_policies.smooth_weighted",
		New: func() caddy.Module { return new(SmoothWeighted) },
	}
}

// Validate rejects weights out of range.
func (sw *SmoothWeighted) Validate() error {
	return sw.Weights.validate()
}

// Select returns the next available upstream of the cycle, or nil when
// none is available.
func (sw *SmoothWeighted) Select(upstreams reverseproxy.UpstreamPool, r *http.Request, _ http.ResponseWriter) *reverseproxy.Upstream {
	if p := pool.PreselectionBy(r, sw, upstreams); p != nil {
		return sw.selectCandidate(upstreams, p.Snapshot)
	}
	s := sw.schedules.get(upstreams, r, sw.Weights, buildSchedule)
	i := s.pick(func(i int) bool { return upstreams[i].Available() })
	if i < 0 {
		return nil
	}
	return upstreams[i]
}

// Preselect takes the next turn of the cycle and names its upstream and
// those of the turns after it, as many as pool.MaxCandidates: the
// upstreams Select would try, in order, if the first were unavailable.
func (sw *SmoothWeighted) Preselect(s *pool.Snapshot, _ *http.Request, candidates []int) []int {
	return sw.schedules.forSnapshot(s, sw.Weights, buildSchedule).upcoming(candidates, pool.MaxCandidates)
}

// selectCandidate returns the first available of the candidates that
// Preselect named, using up the turns of those before it, as Select does
// with the turns of unavailable upstreams.
func (sw *SmoothWeighted) selectCandidate(candidates []*reverseproxy.Upstream, s *pool.Snapshot) *reverseproxy.Upstream {
	i := firstAvailable(candidates)
	turns := sw.schedules.forSnapshot(s, sw.Weights, buildSchedule)
	if i < 0 {
		turns.skip(len(candidates) - 1)
		return nil
	}
	turns.skip(i)
	return candidates[i]
}

// buildSchedule builds the cycle of a pool from its weights.
func buildSchedule(_ []string, weights []int) *schedule { return newSchedule(weights) }

// Interface guards
var (
	_ caddy.Validator       = (*SmoothWeighted)(nil)
	_ reverseproxy.Selector = (*SmoothWeighted)(nil)
	_ pool.Preselector      = (*SmoothWeighted)(nil)
)
