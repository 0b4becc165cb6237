package consul

import (
	"reflect"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
)

// Chains holds one discovery chain watch per key, shared like the health
// watches.
var Chains = NewRegistry[ChainKey, *ChainWatch]()

// ChainKey is what makes two discovery chain watches differ.
type ChainKey struct {
	Endpoint // with its namespace and partition
	// Service is the service whose chain is watched.
	Service string
	// Datacenter is the datacenter the chain is compiled for.
	Datacenter string
	// Consistency is ConsistencyDefault, ConsistencyStale or
	// ConsistencyCached.
	Consistency string
	// Wait is a blocking query's wait.
	Wait time.Duration
}

// ChainWatch keeps a service's discovery chain, as Consul compiles it from
// the service-router, service-splitter and service-resolver config entries,
// current, with blocking queries of /v1/discovery-chain/<service>.
type ChainWatch struct {
	*Poller[*CompiledChain]
	// Key is what the watch watches.
	Key   ChainKey
	chain atomic.Pointer[CompiledChain]
}

// TakeChain returns the shared chain watch of key over conn, starting it if
// it is the first; Chains.Release(key) lets go of it.
func TakeChain(key ChainKey, conn Connection) (*ChainWatch, error) {
	return Chains.Take(key, func() (*ChainWatch, error) {
		c := &ChainWatch{Key: key}
		p, err := NewPoller(conn, Querier[*CompiledChain](c), PollerOptions{Subject: key.Service, Datacenter: key.Datacenter})
		if err != nil {
			return nil, err
		}
		c.Poller = p
		return c, p.Start()
	})
}

// Chain is the compiled chain; nil until Consul first answers.
func (c *ChainWatch) Chain() *CompiledChain { return c.chain.Load() }

// Query asks for the chain compiled in the key's datacenter.
func (c *ChainWatch) Query(client *api.Client, q *api.QueryOptions, leader bool) (*CompiledChain, *api.QueryMeta, error) {
	q.Datacenter = c.Key.Datacenter
	q.AllowStale = c.Key.Consistency == ConsistencyStale && !leader
	q.UseCache = c.Key.Consistency == ConsistencyCached && !leader
	var out struct{ Chain *CompiledChain }
	meta, err := client.Raw().Query("/v1/discovery-chain/"+c.Key.Service, &out, q)
	return out.Chain, meta, err
}

// Wait is the blocking queries' wait.
func (c *ChainWatch) Wait() time.Duration { return c.Key.Wait }

// Apply publishes the chain, when it changed.
func (c *ChainWatch) Apply(chain *CompiledChain) {
	if chain == nil || reflect.DeepEqual(chain, c.chain.Load()) {
		return
	}
	c.chain.Store(chain)
	c.Notify()
}

// The types below are the parts of Consul's compiled discovery chain that
// caddymesh evaluates. They follow api.CompiledDiscoveryChain, adding what
// the api package leaves out of Consul's answer: a split's Definition (its
// header actions), a resolver's RequestTimeout, and a target's Partition
// and Peer.

// CompiledChain is Consul's compiled discovery chain of a service.
type CompiledChain struct {
	// ServiceName is the service the chain is of.
	ServiceName string
	// Namespace is the service's namespace (Consul Enterprise).
	Namespace string
	// Partition is the service's admin partition (Consul Enterprise).
	Partition string
	// Datacenter is the datacenter the chain is compiled for.
	Datacenter string
	// Protocol is the service's protocol (service-defaults): tcp, http,
	// http2 or grpc; routers and splitters need an HTTP one.
	Protocol string
	// Default is set when no config entry shapes the chain.
	Default bool
	// StartNode is the name of the first node a request meets.
	StartNode string
	// Nodes are the chain's nodes by name.
	Nodes map[string]*ChainNode
	// Targets are the chain's targets by ID.
	Targets map[string]*ChainTarget
}

// ChainNode is a router, splitter or resolver node of a compiled chain.
type ChainNode struct {
	// Type is router, splitter or resolver.
	Type string
	// Name is the node's name (not necessarily a service's).
	Name string
	// Routes are a router's routes in order, the last matching all.
	Routes []*api.DiscoveryRoute
	// Splits are a splitter's legs.
	Splits []*ChainSplit
	// Resolver is a resolver's target and failover.
	Resolver *ChainResolver
	// LoadBalancer is the node's load balancing, for Envoy.
	LoadBalancer *api.LoadBalancer
}

// ChainResolver is the resolver of a resolver node.
type ChainResolver struct {
	// Target is the ID of the target requests go to.
	Target string
	// Failover lists the targets to use, in order, when Target has no
	// healthy instance.
	Failover *api.DiscoveryFailover
	// RequestTimeout is the resolver's request timeout (nanoseconds in
	// Consul's answer).
	RequestTimeout time.Duration
}

// ChainSplit is one leg of a splitter node.
type ChainSplit struct {
	// Weight is the leg's share of the requests, in percent.
	Weight float32
	// NextNode is the resolver node the leg leads to.
	NextNode string
	// Definition is the split of the service-splitter entry, with its
	// header actions.
	Definition *api.ServiceSplit
}

// ChainTarget is a target of a compiled chain: a service subset in a
// datacenter, found with a filter.
type ChainTarget struct {
	// ID names the target, such as v2.web.default.default.dc1.
	ID string
	// Service is the target's service.
	Service string
	// ServiceSubset is the target's subset of the service, if any.
	ServiceSubset string
	// Namespace is the service's namespace (Consul Enterprise).
	Namespace string
	// Partition is the service's admin partition (Consul Enterprise).
	Partition string
	// Datacenter is the datacenter of the target's instances.
	Datacenter string
	// Peer is the cluster peer of the target's instances, if any.
	Peer string
	// External is set for a service behind a terminating gateway.
	External bool
	// MeshGateway says how Envoy would reach the target.
	MeshGateway api.MeshGatewayConfig
	// Subset is the subset's filter and OnlyPassing.
	Subset api.ServiceResolverSubset
}

// Interface guards
var _ Watch = (*ChainWatch)(nil)
