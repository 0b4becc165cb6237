// Package keyed keeps per-key state for handlers that act per caller, host
// or other request key. It is sharded, so that no lock is global; idle
// keys expire, and the number of keys is capped, so that a flood of
// distinct keys cannot exhaust memory.
package keyed

import (
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"
)

const (
	shardCount = 64
	// evictionProbes is how many entries of a full shard are looked at for
	// one to evict.
	evictionProbes = 16
)

// Store maps keys to entries of state T.
type Store[T any] struct {
	shards    [shardCount]shard[T]
	seed      maphash.Seed
	perShard  int
	idleAfter time.Duration
	create    func() T
}

type shard[T any] struct {
	mu      sync.RWMutex
	entries map[string]*Entry[T]
}

// Entry is the state of one key.
type Entry[T any] struct {
	// Value is the key's state.
	Value    T
	key      string
	lastUsed atomic.Int64 // unix nanoseconds
	users    atomic.Int32 // holders between Acquire and Release: never evicted
}

// New returns a store of at most maxKeys keys (rounded up to a multiple of
// the shard count), whose entries create makes, and which Sweep forgets
// once unused for idleAfter.
func New[T any](maxKeys int, idleAfter time.Duration, create func() T) *Store[T] {
	s := &Store[T]{
		seed:      maphash.MakeSeed(),
		perShard:  max(1, (maxKeys+shardCount-1)/shardCount),
		idleAfter: idleAfter,
		create:    create,
	}
	for i := range s.shards {
		s.shards[i].entries = make(map[string]*Entry[T])
	}
	return s
}

// Acquire returns the entry of key at time now, creating it, and holds it
// until Release. It returns nil when the key is new and its shard is full
// of entries in use.
func (s *Store[T]) Acquire(key string, now time.Time) *Entry[T] {
	sh := &s.shards[maphash.String(s.seed, key)%shardCount]
	sh.mu.RLock()
	e := sh.entries[key]
	if e != nil {
		e.users.Add(1) // under the read lock: Sweep and eviction hold the write lock
	}
	sh.mu.RUnlock()
	if e == nil {
		if e = s.insert(sh, key); e == nil {
			return nil
		}
	}
	e.touch(now.UnixNano(), s.idleAfter/touchResolution)
	return e
}

// touchResolution is how finely an entry's last use is kept: to within a
// 64th of idleAfter, so that a key in heavy use is not written to, from
// every core, on every request.
const touchResolution = 64

// touch records a use at now, unless one was recorded within resolution.
func (e *Entry[T]) touch(now int64, resolution time.Duration) {
	if now-e.lastUsed.Load() >= int64(resolution) {
		e.lastUsed.Store(now)
	}
}

// insert adds key to sh, held once, evicting an idle entry when sh is full.
func (s *Store[T]) insert(sh *shard[T], key string) *Entry[T] {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if e := sh.entries[key]; e != nil { // added meanwhile
		e.users.Add(1)
		return e
	}
	if len(sh.entries) >= s.perShard && !sh.evictOne() {
		return nil
	}
	e := &Entry[T]{Value: s.create(), key: key}
	e.users.Store(1)
	sh.entries[key] = e
	return e
}

// evictOne removes the least recently used of a few unused entries of a
// full shard (map iteration starts at random), and reports whether it
// found one. The caller holds the write lock.
func (sh *shard[T]) evictOne() bool {
	var victim *Entry[T]
	probes := 0
	for _, e := range sh.entries {
		if e.users.Load() == 0 && (victim == nil || e.lastUsed.Load() < victim.lastUsed.Load()) {
			victim = e
		}
		if probes++; probes == evictionProbes {
			break
		}
	}
	if victim == nil {
		return false
	}
	delete(sh.entries, victim.key)
	return true
}

// Release lets go of an entry acquired.
func (e *Entry[T]) Release() {
	e.users.Add(-1)
}

// Key returns the entry's key.
func (e *Entry[T]) Key() string { return e.key }

// Sweep forgets the entries unused since idleAfter before now.
func (s *Store[T]) Sweep(now time.Time) {
	cutoff := now.Add(-s.idleAfter).UnixNano()
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		for key, e := range sh.entries {
			if e.users.Load() == 0 && e.lastUsed.Load() < cutoff {
				delete(sh.entries, key)
			}
		}
		sh.mu.Unlock()
	}
}

// Len returns the number of keys held.
func (s *Store[T]) Len() int {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.RLock()
		n += len(sh.entries)
		sh.mu.RUnlock()
	}
	return n
}

// Range calls f with every entry, shard by shard.
func (s *Store[T]) Range(f func(*Entry[T])) {
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.RLock()
		for _, e := range sh.entries {
			f(e)
		}
		sh.mu.RUnlock()
	}
}
