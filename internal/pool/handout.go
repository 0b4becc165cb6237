package pool

import (
	"net/http"
	"sync"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"
)

// Handout hands the instances of a snapshot to Caddy for an attempt of a
// request of one reverse_proxy: the few candidates its policy names, when
// the policy is a Preselector and the pool has more than PreselectAbove
// instances; otherwise, and on a retry, the whole pool. It records in the
// request where the upstreams came from, for the policy's Select.
//
// It finds the policy when the first request comes, the proxy being
// provisioned by then whatever the order in which Caddy loads its
// fields, and logs once when a large pool must go whole to Caddy because
// the policy cannot preselect. A nil *Handout hands out whole pools.
type Handout struct {
	proxy  *reverseproxy.Handler
	logger *zap.Logger
	find   sync.Once
	policy Preselector
	warn   sync.Once
}

// NewHandout returns the handout of the reverse_proxy proxy, which logs
// to logger. A nil proxy (a source outside any reverse_proxy) hands out
// whole pools.
func NewHandout(proxy *reverseproxy.Handler, logger *zap.Logger) *Handout {
	if logger == nil {
		logger = zap.NewNop()
	}
	return &Handout{proxy: proxy, logger: logger}
}

// retrying marks, in a request's variables, that its next attempt is a
// retry.
type retrying struct{}

// Retry marks the next attempt of r as a retry, which gets the whole pool:
// its candidates may all have failed. Caddy calls a source's ResetCache
// before every retry.
func (h *Handout) Retry(r *http.Request) {
	caddyhttp.SetVar(r.Context(), varName, retrying{})
}

// Upstreams returns fresh upstreams for an attempt of r from snap: the
// candidates the policy names, or the whole pool.
func (h *Handout) Upstreams(r *http.Request, snap *Snapshot) []*reverseproxy.Upstream {
	if len(snap.Instances) > PreselectAbove {
		if _, retry := caddyhttp.GetVar(r.Context(), varName).(retrying); !retry {
			if policy := h.preselector(len(snap.Instances)); policy != nil {
				if upstreams := preselect(r, snap, policy); upstreams != nil {
					return upstreams
				}
			}
		}
	}
	Attach(r, snap)
	return NewUpstreams(snap.Instances)
}

// preselector returns the proxy's policy when it can preselect; when it
// cannot, it logs so once, for a pool of n instances.
func (h *Handout) preselector(n int) Preselector {
	if h == nil {
		return nil
	}
	h.find.Do(func() {
		if h.proxy != nil && h.proxy.LoadBalancing != nil {
			h.policy, _ = h.proxy.LoadBalancing.SelectionPolicy.(Preselector)
		}
	})
	if h.policy == nil {
		h.warn.Do(func() {
			h.logger.Info("the selection policy cannot name candidates: Caddy prepares every instance of this large pool on every attempt; smooth_weighted, consistent_hash and least_latency can",
				zap.Int("instances", n))
		})
	}
	return h.policy
}

// preselected is everything an attempt with candidates hands out, in one
// allocation.
type preselected struct {
	Preselection
	indexes   [MaxCandidates]int
	values    [MaxCandidates]reverseproxy.Upstream
	upstreams [MaxCandidates]*reverseproxy.Upstream
}

// preselect returns fresh upstreams for the candidates policy names for
// r, or nil when it names none.
func preselect(r *http.Request, snap *Snapshot, policy Preselector) []*reverseproxy.Upstream {
	ps := &preselected{Preselection: Preselection{By: policy, Snapshot: snap}}
	named := policy.Preselect(snap, r, ps.indexes[:0])
	if len(named) == 0 {
		return nil
	}
	ps.Candidates = named[:min(len(named), MaxCandidates)]
	for i, instance := range ps.Candidates {
		ps.values[i].Dial = snap.Instances[instance].Dial
		ps.upstreams[i] = &ps.values[i]
	}
	AttachPreselection(r, &ps.Preselection)
	return ps.upstreams[:len(ps.Candidates)]
}

// NewUpstreams returns fresh Upstream values for instances, in two
// allocations: Caddy writes into each Upstream during an attempt, so they
// cannot be shared between requests.
func NewUpstreams(instances []Instance) []*reverseproxy.Upstream {
	values := make([]reverseproxy.Upstream, len(instances))
	list := make([]*reverseproxy.Upstream, len(instances))
	for i := range instances {
		values[i].Dial = instances[i].Dial
		list[i] = &values[i]
	}
	return list
}
