package discovery

import (
	"context"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
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
var leaderChecks = caddy.NewUsagePool()

// leaderKey is what makes two leader checks differ.
type leaderKey struct {
	endpoint
	datacenter string
}

// leaderCheck asks Consul for its leader (GET /v1/status/leader, which
// needs no ACL and is answered by whichever server the agent asks) every
// leaderCheckInterval, on a goroutine of its own.
type leaderCheck struct {
	state  atomic.Pointer[leaderState]
	http   *http.Client
	cancel context.CancelFunc
	done   chan struct{}
}

// leaderState is what the last leader checks found.
type leaderState struct {
	checked   time.Time // when the last check ended; zero before the first
	known     bool      // whether it found a leader
	lastFound time.Time // when a check last found one
}

// takeLeaderCheck returns the shared leader check of conn in datacenter,
// starting it if it is the first; releaseLeaderCheck lets go of it.
func takeLeaderCheck(conn connection, datacenter string) (*leaderCheck, leaderKey, error) {
	key := leaderKey{conn.endpoint, datacenter}
	value, _, err := leaderChecks.LoadOrNew(key, func() (caddy.Destructor, error) {
		client, httpClient, err := conn.newClient()
		if err != nil {
			return nil, err
		}
		ctx, cancel := context.WithCancel(context.Background())
		l := &leaderCheck{cancel: cancel, done: make(chan struct{}), http: httpClient}
		l.state.Store(&leaderState{})
		q := &api.QueryOptions{Datacenter: datacenter, Token: conn.token}
		go l.run(ctx, client, q)
		return l, nil
	})
	if err != nil {
		return nil, key, err
	}
	return value.(*leaderCheck), key, nil
}

func releaseLeaderCheck(key leaderKey) {
	_, _ = leaderChecks.Delete(key)
}

// Destruct stops the check. The usage pool calls it when the last poller
// lets go.
func (l *leaderCheck) Destruct() error {
	l.cancel()
	<-l.done
	l.http.CloseIdleConnections()
	return nil
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
		if !sleep(ctx, leaderCheckInterval) {
			return
		}
	}
}

// record keeps the outcome of a check that ended at now.
func (l *leaderCheck) record(now time.Time, found bool) {
	next := leaderState{checked: now, known: found, lastFound: l.state.Load().lastFound}
	if found {
		next.lastFound = now
	}
	l.state.Store(&next)
}

// Interface guards
var _ caddy.Destructor = (*leaderCheck)(nil)
