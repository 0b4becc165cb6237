package consul

import "github.com/hashicorp/consul/api"

// AgentSelf is what caddymesh reads of the local agent's own description
// (GET /v1/agent/self, which takes agent:read).
type AgentSelf struct {
	// NodeID is the agent's node ID.
	NodeID string
	// DefaultIntentionPolicy is the agent's default_intention_policy, ""
	// when unset.
	DefaultIntentionPolicy string
	// ACLDefaultPolicy is the agent's ACL default policy.
	ACLDefaultPolicy string
}

// ReadAgentSelf asks the local agent for its description, with q's token
// and context.
func ReadAgentSelf(client *api.Client, q *api.QueryOptions) (AgentSelf, error) {
	var self struct {
		Config      struct{ NodeID string }
		DebugConfig struct {
			DefaultIntentionPolicy string
			ACLResolverSettings    struct{ ACLDefaultPolicy string }
		}
	}
	if _, err := client.Raw().Query("/v1/agent/self", &self, q); err != nil {
		return AgentSelf{}, err
	}
	return AgentSelf{
		NodeID:                 self.Config.NodeID,
		DefaultIntentionPolicy: self.DebugConfig.DefaultIntentionPolicy,
		ACLDefaultPolicy:       self.DebugConfig.ACLResolverSettings.ACLDefaultPolicy,
	}, nil
}
