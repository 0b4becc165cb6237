// Package running keeps track of the module instances that the configs
// running hold, for what reads across them: the admin API, metrics,
// certificate permissions. An instance is added when provisioned and
// removed at cleanup.
package running

import (
	"maps"
	"slices"
	"sync"
)

// Set is the running instances of a module.
type Set[T comparable] struct {
	mu  sync.Mutex
	set map[T]struct{}
}

// Add records a provisioned instance.
func (s *Set[T]) Add(v T) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.set == nil {
		s.set = make(map[T]struct{})
	}
	s.set[v] = struct{}{}
}

// Remove forgets an instance cleaned up.
func (s *Set[T]) Remove(v T) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.set, v)
}

// All returns the instances running now, in no particular order.
func (s *Set[T]) All() []T {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Collect(maps.Keys(s.set))
}
