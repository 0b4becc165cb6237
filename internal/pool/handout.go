package discovery

import (
	"net/http"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddymesh/caddymesh/internal/pool"
)

// preselectorOf returns the selection policy of h when it can preselect;
// Caddy provisions the policy of a reverse_proxy before its upstream source.
func preselectorOf(h *reverseproxy.Handler) pool.Preselector {
	if h == nil || h.LoadBalancing == nil {
		return nil
	}
	p, _ := h.LoadBalancing.SelectionPolicy.(pool.Preselector)
	return p
}

// handOut returns the upstreams of snap for an attempt of r, and records
// in r where they came from. Given a preselector and a pool larger than
// pool.PreselectAbove, they are the few candidates the preselector names;
// otherwise, and on the retry of an attempt that had candidates, the whole
// pool.
func handOut(r *http.Request, snap *pool.Snapshot, p pool.Preselector) []*reverseproxy.Upstream {
	if p != nil && len(snap.Instances) > pool.PreselectAbove && pool.PreselectionOf(r) == nil {
		if upstreams := preselect(r, snap, p); upstreams != nil {
			return upstreams
		}
	}
	pool.Attach(r, snap)
	return newUpstreams(snap.Instances)
}

// preselected is everything an attempt with candidates hands out, in one
// allocation.
type preselected struct {
	pool.Preselection
	indexes   [pool.MaxCandidates]int
	values    [pool.MaxCandidates]reverseproxy.Upstream
	upstreams [pool.MaxCandidates]*reverseproxy.Upstream
}

// preselect returns fresh upstreams for the candidates p names for r, or
// nil when it names none.
func preselect(r *http.Request, snap *pool.Snapshot, p pool.Preselector) []*reverseproxy.Upstream {
	ps := &preselected{Preselection: pool.Preselection{Snapshot: snap}}
	named := p.Preselect(snap, r, ps.indexes[:0])
	if len(named) == 0 {
		return nil
	}
	ps.Candidates = named[:min(len(named), pool.MaxCandidates)]
	for i, instance := range ps.Candidates {
		ps.values[i].Dial = snap.Instances[instance].Dial
		ps.upstreams[i] = &ps.values[i]
	}
	pool.AttachPreselection(r, &ps.Preselection)
	return ps.upstreams[:len(ps.Candidates)]
}
