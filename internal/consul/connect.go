package consul

import "github.com/hashicorp/consul/api"

// ConnectCA is the local agent's Connect CA endpoints, where a
// Connect-native service gets its certificates. Consul marks them
// deprecated; every use of them goes through this interface.
type ConnectCA interface {
	// Roots blocks, as q says, for Consul's Connect CA roots
	// (/v1/agent/connect/ca/roots).
	Roots(q *api.QueryOptions) (*api.CARootList, *api.QueryMeta, error)
	// Leaf blocks, as q says, for service's leaf certificate
	// (/v1/agent/connect/ca/leaf/<service>), which the agent issues and
	// renews.
	Leaf(service string, q *api.QueryOptions) (*api.LeafCert, *api.QueryMeta, error)
}

// AgentConnectCA returns the Connect CA endpoints of client's agent.
func AgentConnectCA(client *api.Client) ConnectCA { return agentConnectCA{client} }

// agentConnectCA is ConnectCA over Consul's API client.
type agentConnectCA struct{ client *api.Client }

func (a agentConnectCA) Roots(q *api.QueryOptions) (*api.CARootList, *api.QueryMeta, error) {
	return a.client.Agent().ConnectCARoots(q)
}

func (a agentConnectCA) Leaf(service string, q *api.QueryOptions) (*api.LeafCert, *api.QueryMeta, error) {
	return a.client.Agent().ConnectCALeaf(service, q)
}
