package connect

import "github.com/hashicorp/consul/api"

// ConnectCA is the local agent's Connect CA endpoints, which caddymesh uses
// for certificates. Consul marks them deprecated; every use of them goes
// through this interface.
type ConnectCA interface {
	// Roots blocks, as q says, for Consul's Connect CA roots
	// (/v1/agent/connect/ca/roots).
	Roots(q *api.QueryOptions) (*api.CARootList, *api.QueryMeta, error)
	// Leaf blocks, as q says, for service's leaf certificate
	// (/v1/agent/connect/ca/leaf/<service>), issued and renewed by the
	// agent.
	Leaf(service string, q *api.QueryOptions) (*api.LeafCert, *api.QueryMeta, error)
}

// agentCA is ConnectCA over Consul's API client.
type agentCA struct{ client *api.Client }

func (a agentCA) Roots(q *api.QueryOptions) (*api.CARootList, *api.QueryMeta, error) {
	return a.client.Agent().ConnectCARoots(q)
}

func (a agentCA) Leaf(service string, q *api.QueryOptions) (*api.LeafCert, *api.QueryMeta, error) {
	return a.client.Agent().ConnectCALeaf(service, q)
}
