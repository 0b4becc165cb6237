// Package pool is the vocabulary that an upstream source and a selection
// policy share without importing each other: an immutable snapshot of a
// service's instances, and the request variable that carries the snapshot
// from the source's GetUpstreams to the policy's Select.
package pool

import (
	"net/http"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
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
