package consul

import (
	"cmp"
	"net"
	"slices"
	"strconv"
	"strings"

	"github.com/hashicorp/consul/api"

	"github.com/caddymesh/caddymesh/internal/pool"
	"github.com/caddymesh/caddymesh/internal/spiffe"
)

// Health modes: which instances are in rotation.
const (
	// HealthPassing admits only instances whose checks all pass.
	HealthPassing = "passing"
	// HealthWarning also admits instances with warning checks, at their
	// warning weight.
	HealthWarning = "warning"
)

// maxWeight is the largest weight an instance can have; Consul's Envoy
// integration clamps at the same value.
const maxWeight = 128

// classified is what one Consul answer says about a service.
type classified struct {
	// healthy are the instances in rotation under the health mode.
	healthy []pool.Instance
	// all are the instances not in maintenance, in rotation or not: what
	// panic mode serves.
	all []pool.Instance
	// maintenance counts the instances in maintenance mode.
	maintenance int
}

// classify sorts Consul's health entries into instances, following Consul's
// own Envoy integration: any critical check (the node's serfHealth included)
// takes an instance out of rotation, so does a non-passing check in passing
// mode; the weight is Weights.Passing, or Weights.Warning when a check
// warns, 1 when the service has no weights, clamped to 1..128, and a weight
// below 1 also takes the instance out of rotation. Maintenance mode is
// left out entirely, and so are connect-proxy instances, unless the
// entries are Connect's catalog of the service (connect): then each
// instance carries the identity it presents.
func classify(entries []*api.ServiceEntry, mode string, connect bool) classified {
	var out classified
	for _, e := range entries {
		if e.Service == nil || (e.Service.Kind == api.ServiceKindConnectProxy && !connect) {
			continue
		}
		status := e.Checks.AggregatedStatus()
		if status == api.HealthMaint {
			out.maintenance++
			continue
		}
		inst, healthy := instanceOf(e, status, mode)
		if inst.Dial == "" {
			continue
		}
		if connect {
			inst.Identity = connectIdentity(e)
		}
		out.all = append(out.all, inst)
		if healthy {
			out.healthy = append(out.healthy, inst)
		}
	}
	return out
}

// instanceOf converts one entry whose checks aggregate to status, and says
// whether it is in rotation.
func instanceOf(e *api.ServiceEntry, status, mode string) (pool.Instance, bool) {
	svc := e.Service
	healthy := status == api.HealthPassing || (status == api.HealthWarning && mode == HealthWarning)

	weight := 1
	if weighted := svc.Weights != (api.AgentWeights{}); weighted {
		weight = svc.Weights.Passing
		if status == api.HealthWarning {
			weight = svc.Weights.Warning
		}
	}
	if weight < 1 {
		healthy, weight = false, 1
	}
	weight = min(weight, maxWeight)

	return pool.Instance{
		ID:         svc.ID,
		Dial:       dialAddress(e),
		Weight:     weight,
		Health:     status,
		Node:       nodeName(e.Node),
		Datacenter: nodeDatacenter(e.Node),
		Tags:       slices.Clone(svc.Tags),
		Meta:       svc.Meta,
	}, healthy
}

// dialAddress is Service.Address, falling back to Node.Address, with
// Service.Port; empty when the instance has no port to dial.
func dialAddress(e *api.ServiceEntry) string {
	if e.Service.Port <= 0 {
		return ""
	}
	host := e.Service.Address
	if host == "" && e.Node != nil {
		host = e.Node.Address
	}
	if host == "" {
		return ""
	}
	return net.JoinHostPort(host, strconv.Itoa(e.Service.Port))
}

func nodeName(n *api.Node) string {
	if n == nil {
		return ""
	}
	return n.Node
}

func nodeDatacenter(n *api.Node) string {
	if n == nil {
		return ""
	}
	return n.Datacenter
}

// connectIdentity is the service identity an instance of Connect's catalog
// presents, without its trust domain, as Consul's own resolver
// (connect.ConsulResolver) reads it: a sidecar proxy's destination
// service, or a Connect-native service's own name, in the datacenter of
// its node.
func connectIdentity(e *api.ServiceEntry) *spiffe.ServiceID {
	svc := e.Service
	name := svc.Service
	if svc.Kind == api.ServiceKindConnectProxy && svc.Proxy != nil {
		name = svc.Proxy.DestinationServiceName
	}
	return &spiffe.ServiceID{
		Partition:  strings.ToLower(cmp.Or(svc.Partition, "default")),
		Namespace:  cmp.Or(svc.Namespace, "default"),
		Datacenter: nodeDatacenter(e.Node),
		Service:    name,
	}
}
