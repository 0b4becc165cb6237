package connect

import (
	"context"
	"encoding/json"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/hashicorp/consul/api"

	"github.com/caddymesh/caddymesh/discovery"
)

// TEMPORARY until internal/consul lands (house): the connection, its key
// and a plain blocking loop.

// consulConn is a resolved Consul connection and the key of its watches.
type consulConn struct {
	key       string
	client    *api.Client
	closeIdle func()
}

func dialConsul(ctx caddy.Context, settings *discovery.ConsulConfig) (consulConn, error) {
	client, closeIdle, err := discovery.NewConsulClient(ctx, settings)
	if err != nil {
		return consulConn{}, err
	}
	key, _ := json.Marshal(settings)
	return consulConn{key: string(key), client: client, closeIdle: closeIdle}, nil
}

// querier is what a watch says: how to ask, how long to wait, what to do
// with an answer.
type querier[T any] interface {
	Query(client *api.Client, q *api.QueryOptions, leader bool) (T, *api.QueryMeta, error)
	Wait() time.Duration
	Apply(answer T)
}

// poll asks q until ctx ends, calling tried after the first outcome.
func poll[T any](ctx context.Context, client *api.Client, q querier[T], tried func()) {
	var index uint64
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		opts := (&api.QueryOptions{WaitIndex: index, WaitTime: q.Wait()}).WithContext(ctx)
		answer, meta, err := q.Query(client, opts, false)
		tried()
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 2*time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
		if meta.LastIndex < index {
			index = 0
		} else {
			index = max(meta.LastIndex, 1)
		}
		q.Apply(answer)
	}
}
