package consul

import (
	"context"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
)

// How often, and how patiently, each Consul connection asks whether its
// datacenter has a leader: a blocking query in flight says nothing while
// it waits, and a client agent's streaming answers carry no leader header,
// so this is how a watch learns that Consul lost its leader (within
// leaderCheckInterval plus leaderCheckTimeout).
const (
	leaderCheckInterval = 10 * time.Second
	leaderCheckTimeout  = 5 * time.Second
)

// leaderChecks holds one leader check per Consul connection and
// datacenter, shared by every poller that uses them.
var leaderChecks = NewRegistry[leaderKey, *leaderCheck]()

// leaderKey is what makes two leader checks differ.
type leaderKey struct {
	Endpoint
	datacenter string
}

// leaderCheck asks Consul for its leader (GET /v1/status/leader, which
// needs no ACL and is answered by whichever server the agent asks) every
// leaderCheckInterval, on a goroutine of its own.
type leaderCheck struct {
	state  atomic.Pointer[LeaderState]
	http   *http.Client
	cancel context.CancelFunc
	done   chan struct{}
}

// LeaderState is what the last leader checks found.
type LeaderState struct {
	// Checked is when the last check ended; zero before the first.
	Checked time.Time
	// Known is whether it found a leader.
	Known bool
	// LastFound is when a check last found one.
	LastFound time.Time
}

// takeLeaderCheck returns the shared leader check of conn in datacenter,
// starting it if it is the first; leaderChecks.Release lets go of it.
func takeLeaderCheck(conn Connection, datacenter string) (*leaderCheck, leaderKey, error) {
	key := leaderKey{conn.Endpoint, datacenter}
	l, err := leaderChecks.Take(key, func() (*leaderCheck, error) {
		client, httpClient, err := conn.NewClient()
		if err != nil {
			return nil, err
		}
		ctx, cancel := context.WithCancel(context.Background())
		l := &leaderCheck{cancel: cancel, done: make(chan struct{}), http: httpClient}
		l.state.Store(&LeaderState{})
		q := &api.QueryOptions{Datacenter: datacenter, Token: conn.token}
		go l.run(ctx, client, q)
		return l, nil
	})
	return l, key, err
}

// Stop stops the check. The registry calls it when the last poller lets
// go.
func (l *leaderCheck) Stop() {
	l.cancel()
	<-l.done
	l.http.CloseIdleConnections()
}

func (l *leaderCheck) run(ctx context.Context, client *api.Client, q *api.QueryOptions) {
	defer close(l.done)
	for {
		check, cancel := context.WithTimeout(ctx, leaderCheckTimeout)
		leader, err := client.Status().LeaderWithQueryOptions(q.WithContext(check))
		cancel()
		if ctx.Err() != nil {
			return
		}
		l.record(time.Now(), err == nil && leader != "")
		if !Sleep(ctx, leaderCheckInterval) {
			return
		}
	}
}

// record keeps the outcome of a check that ended at now.
func (l *leaderCheck) record(now time.Time, found bool) {
	next := LeaderState{Checked: now, Known: found, LastFound: l.state.Load().LastFound}
	if found {
		next.LastFound = now
	}
	l.state.Store(&next)
}

// Interface guards
var _ Watch = (*leaderCheck)(nil)
