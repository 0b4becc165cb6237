package consul

import (
	"context"
	"sync"
	"time"
)

// Watch is what a Registry holds: something running that its last user
// stops.
type Watch interface {
	// Stop ends the watch and waits for its goroutines to end.
	Stop()
}

// Registry holds one shared watch per key, for every module and every
// config that watches the same thing: the first Take of a key starts its
// watch, each Take counts a user, and the Release of the last user stops
// it. Caddy provisions a new config before it cleans up the old one, so a
// watch that both configs use survives the reload. Keys must hold every
// setting that makes two watches differ, and never a secret (Endpoint
// holds a token's hash).
type Registry[K comparable, W Watch] struct {
	mu      sync.Mutex
	entries map[K]*registered[W]
}

type registered[W Watch] struct {
	watch W
	users int
}

// NewRegistry returns an empty registry.
func NewRegistry[K comparable, W Watch]() *Registry[K, W] {
	return &Registry[K, W]{entries: make(map[K]*registered[W])}
}

// Take returns the watch of key, calling start for it if it is the first
// user; an error of start is returned and nothing is held.
func (r *Registry[K, W]) Take(key K, start func() (W, error)) (W, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.entries[key]; e != nil {
		e.users++
		return e.watch, nil
	}
	w, err := start()
	if err != nil {
		var none W
		return none, err
	}
	r.entries[key] = &registered[W]{watch: w, users: 1}
	return w, nil
}

// Release lets go of one use of key's watch, and stops the watch when it
// was the last. Releasing a key that is not held does nothing.
func (r *Registry[K, W]) Release(key K) {
	r.mu.Lock()
	e := r.entries[key]
	if e == nil {
		r.mu.Unlock()
		return
	}
	e.users--
	if e.users > 0 {
		r.mu.Unlock()
		return
	}
	delete(r.entries, key)
	r.mu.Unlock()
	e.watch.Stop()
}

// Range calls f with every watch, its key and its number of users, in no
// order, outside the registry's lock.
func (r *Registry[K, W]) Range(f func(key K, w W, users int)) {
	type item struct {
		key   K
		watch W
		users int
	}
	r.mu.Lock()
	items := make([]item, 0, len(r.entries))
	for k, e := range r.entries {
		items = append(items, item{k, e.watch, e.users})
	}
	r.mu.Unlock()
	for _, it := range items {
		f(it.key, it.watch, it.users)
	}
}

// Len is how many watches run.
func (r *Registry[K, W]) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.entries)
}

// Tried is a watch that says when its first query's outcome is known.
type Tried interface {
	// Tried is closed once the first query has been answered and applied,
	// or has failed.
	Tried() <-chan struct{}
}

// AwaitFirstTries waits until every watch has had its first try at Consul,
// for at most timeout, and reports whether they all did. A failed try does
// not hold the caller up: Consul is down, and the watch says so.
func AwaitFirstTries[W Tried](ctx context.Context, timeout time.Duration, watches ...W) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for _, w := range watches {
		select {
		case <-w.Tried():
		case <-deadline.C:
			return false
		case <-ctx.Done():
			return false
		}
	}
	return true
}
