package pool

import (
	"net/http"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// PreselectorOf returns the selection policy of h when it can preselect;
// Caddy provisions the policy of a reverse_proxy before its upstream source.
func PreselectorOf(h *reverseproxy.Handler) Preselector {
	if h == nil || h.LoadBalancing == nil {
		return nil
	}
	p, _ := h.LoadBalancing.SelectionPolicy.(Preselector)
	return p
}

// HandOut returns the upstreams of snap for an attempt of r, and records
// in r where they came from. Given a preselector and a pool larger than
// PreselectAbove, they are the few candidates the preselector names;
// otherwise, and on the retry of an attempt that had candidates, the whole
func HandOut(r *http.Request, snap *Snapshot, p Preselector) []*reverseproxy.Upstream {
	if p != nil && len(snap.Instances) > PreselectAbove && PreselectionOf(r) == nil {
		if upstreams := preselect(r, snap, p); upstreams != nil {
			return upstreams
		}
	}
	Attach(r, snap)
	return newUpstreams(snap.Instances)
}

// preselected is everything an attempt with candidates hands out, in one
// allocation.
type preselected struct {
	Preselection
	indexes   [MaxCandidates]int
	values    [MaxCandidates]reverseproxy.Upstream
	upstreams [MaxCandidates]*reverseproxy.Upstream
}

// preselect returns fresh upstreams for the candidates p names for r, or
// nil when it names none.
func preselect(r *http.Request, snap *Snapshot, p Preselector) []*reverseproxy.Upstream {
	ps := &preselected{Preselection: Preselection{Snapshot: snap}}
	named := p.Preselect(snap, r, ps.indexes[:0])
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

// newUpstreams returns fresh Upstream values for instances, in two
// allocations: Caddy writes into each Upstream during an attempt, so they
// cannot be shared between requests.
func newUpstreams(instances []Instance) []*reverseproxy.Upstream {
	values := make([]reverseproxy.Upstream, len(instances))
	list := make([]*reverseproxy.Upstream, len(instances))
	for i := range instances {
		values[i].Dial = instances[i].Dial
		list[i] = &values[i]
	}
	return list
}
