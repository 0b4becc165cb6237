// Package pool is the vocabulary that an upstream source and a selection
// policy share without importing each other: an immutable snapshot of a
// service's instances, the request variable that carries the snapshot (or
// the candidates a policy preselected from it) from the source's
// GetUpstreams to the policy's Select, the Preselector interface, and the
// Handout that a source hands its upstreams to Caddy with.
package pool

import (
	"context"
	"net/http"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddymesh/caddymesh/internal/spiffe"
)

// Instance is one instance of a service as discovery saw it.
type Instance struct {
	// ID is the instance's service ID in Consul.
	ID string `json:"id"`
	// Dial is the address Caddy dials: host:port.
	Dial string `json:"dial"`
	// Weight is the instance's share of traffic relative to its peers (1..128).
	Weight int `json:"weight"`
	// Health is the instance's aggregate check status: passing, warning or critical.
	Health string `json:"health"`
	// Node is the name of the Consul node the instance runs on.
	Node string `json:"node"`
	// Datacenter is the Consul datacenter the instance was found in.
	Datacenter string `json:"datacenter,omitempty"`
	// Tags are the instance's service tags.
	Tags []string `json:"tags,omitempty"`
	// Meta is the instance's service metadata.
	Meta map[string]string `json:"meta,omitempty"`
	// Identity is, for an instance from Consul's Connect catalog (a sidecar
	// proxy, or a Connect-native service), the service identity its
	// certificate must carry, without its trust domain; nil otherwise.
	Identity *spiffe.ServiceID `json:"identity,omitempty"`
}

// Snapshot is an immutable list of instances. Its Version is unique within
// the process, so a policy may cache what it derives from a snapshot under
// the version alone.
type Snapshot struct {
	// Version identifies this snapshot; a snapshot with other instances has
	// another version.
	Version uint64
	// Instances are in the order the upstream source returns them to Caddy:
	// Instances[i] describes the i-th upstream of the same GetUpstreams call.
	Instances []Instance
}

var lastVersion atomic.Uint64

// NewSnapshot returns a snapshot of instances with a fresh version.
func NewSnapshot(instances []Instance) *Snapshot {
	return &Snapshot{Version: lastVersion.Add(1), Instances: instances}
}

// varName is the Caddy request variable holding the snapshot that the last
// GetUpstreams call of the request returned.
const varName = "caddymesh.snapshot"

// Attach records s as the snapshot behind the upstreams of r's current
// proxy attempt. A nil s clears it.
func Attach(r *http.Request, s *Snapshot) {
	if s == nil {
		caddyhttp.SetVar(r.Context(), varName, nil)
		return
	}
	caddyhttp.SetVar(r.Context(), varName, s)
}

// FromRequest returns the snapshot attached to r, or nil.
func FromRequest(r *http.Request) *Snapshot {
	s, _ := caddyhttp.GetVar(r.Context(), varName).(*Snapshot)
	return s
}

// Preselector is a selection policy that can choose from a snapshot alone,
// before Caddy sees any upstream. Caddy prepares every upstream a dynamic
// source hands it, on every request (a locked map lookup and a clock
// reading each), which in a large pool costs more than the rest of the
// proxying. So, when the policy is a Preselector and the pool is larger
// than PreselectAbove, the consul source hands Caddy only the instances the
// policy names for the request, and the policy's Select chooses among
// them.
type Preselector interface {
	// Preselect appends to candidates the indexes into s.Instances of at
	// most MaxCandidates instances to try for r, best first, and returns
	// the extended slice. None means: hand Caddy the whole pool.
	Preselect(s *Snapshot, r *http.Request, candidates []int) []int
}

// MaxCandidates is the most instances a Preselector names for an attempt.
const MaxCandidates = 8

// PreselectAbove is the pool size above which the consul source asks a
// Preselector; smaller pools cost Caddy little and are handed over whole.
const PreselectAbove = 16

// Preselection is what the consul source handed Caddy for one attempt when
// a Preselector chose: the upstreams of the attempt are the instances
// Snapshot.Instances[Candidates[0]], Snapshot.Instances[Candidates[1]]...
type Preselection struct {
	// By is the policy that named the candidates; a policy trusts only
	// the preselections it made (see PreselectionBy).
	By Preselector
	// Snapshot is the pool the candidates were chosen from.
	Snapshot *Snapshot
	// Candidates are indexes into Snapshot.Instances, best first.
	Candidates []int
}

// AttachPreselection records p as the origin of the upstreams of r's
// current proxy attempt.
func AttachPreselection(r *http.Request, p *Preselection) {
	caddyhttp.SetVar(r.Context(), varName, p)
}

// PreselectionOf returns the preselection attached to r, or nil when the
// upstreams of r's current attempt are a whole pool (or none was attached).
func PreselectionOf(r *http.Request) *Preselection {
	p, _ := caddyhttp.GetVar(r.Context(), varName).(*Preselection)
	return p
}

// PreselectionBy returns the preselection attached to r when policy made
// it and it names as many candidates as there are upstreams; nil
// otherwise, when policy must choose from upstreams as a whole pool.
func PreselectionBy(r *http.Request, policy Preselector, upstreams []*reverseproxy.Upstream) *Preselection {
	if len(upstreams) > MaxCandidates { // no preselection names so many: skip the lookup of the request's variables
		return nil
	}
	if p := PreselectionOf(r); p != nil && p.By == policy && len(p.Candidates) == len(upstreams) {
		return p
	}
	return nil
}

// EnclosingProxy returns the reverse_proxy handler that ctx is
// provisioning a module of (its source or policy, or a policy's fallback),
// or nil when the module is not one of a reverse_proxy's.
func EnclosingProxy(ctx caddy.Context) *reverseproxy.Handler {
	lineage := ctx.Modules() // ..., the reverse_proxy handler, ..., the module being provisioned
	for i := len(lineage) - 2; i >= 0; i-- {
		if h, ok := lineage[i].(*reverseproxy.Handler); ok {
			return h
		}
	}
	return nil
}

// InstanceAt returns the instance behind the upstream at dial address dial
// of the current proxy attempt of the request whose context ctx is (a
// transport's dial context), or nil when no snapshot or no such instance
// is attached.
func InstanceAt(ctx context.Context, dial string) *Instance {
	var s *Snapshot
	switch attached := caddyhttp.GetVar(ctx, varName).(type) {
	case *Snapshot:
		s = attached
	case *Preselection:
		s = attached.Snapshot
	}
	if s == nil {
		return nil
	}
	for i := range s.Instances {
		if s.Instances[i].Dial == dial {
			return &s.Instances[i]
		}
	}
	return nil
}
