package discovery

// How a registrar checks, through its agent, that the servers' catalog has
// the instance it registered.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"

	"github.com/caddymesh/caddymesh/internal/consul"
)

// catalogEntries asks the servers (through the agent) for the instance's
// catalog entries with their checks, blocking from index for up to wait.
func (r *registrar) catalogEntries(ctx context.Context, want *wantedRegistration, index uint64, wait time.Duration) ([]*api.ServiceEntry, uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, consul.QueryTimeout(wait))
	defer cancel()
	q := &api.QueryOptions{
		Token: want.conn.Token(), WaitIndex: index, WaitTime: wait,
		Filter: fmt.Sprintf("Service.ID == %q", want.spec.ID),
	}
	entries, meta, err := want.client.Health().Service(want.spec.Name, "", false, q.WithContext(ctx))
	if err != nil {
		return nil, 0, err
	}
	return entries, meta.LastIndex, nil
}

// agentNodeID is the local agent's node ID, which tells its catalog entry
// from a stale one under the same node name; "" when the token may not
// read it (agent:read), and then entries are not told apart.
func (r *registrar) agentNodeID(ctx context.Context, want *wantedRegistration) string {
	ctx, cancel := context.WithTimeout(ctx, agentTimeout)
	defer cancel()
	q := (&api.QueryOptions{Token: want.conn.Token()}).WithContext(ctx)
	self, err := consul.ReadAgentSelf(want.client, q)
	if err != nil {
		r.log().Info("cannot read the agent's node ID (agent:read); a stale catalog entry of this instance will not be told from its own", zap.Error(err))
		return ""
	}
	return self.NodeID
}

// catalogState judges the servers' entries of the instance: registered
// when one is on the agent's node and passes; agent_only when none is, or
// only one under another node ID (the servers refuse this agent: see the
// README); failing when its checks do not pass.
func catalogState(entries []*api.ServiceEntry, nodeID string) (string, error) {
	if len(entries) == 0 {
		return stateAgentOnly, errors.New("the servers' catalog does not list the instance: the agent has not synced it to them")
	}
	for _, e := range entries {
		if nodeID != "" && e.Node.ID != nodeID {
			continue
		}
		if status := e.Checks.AggregatedStatus(); status != api.HealthPassing {
			return stateFailing, fmt.Errorf("the servers' catalog has the instance with its checks %s", status)
		}
		return stateRegistered, nil
	}
	e := entries[0]
	return stateAgentOnly, fmt.Errorf("the servers' catalog lists the instance under node %q with ID %s, not this agent's node ID %s: the servers refuse this agent's updates (restarted with a new data dir?)",
		e.Node.Node, e.Node.ID, nodeID)
}
