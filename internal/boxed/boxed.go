// Package boxed keeps strings boxed as interface values, so that storing
// one in a request's Caddy variables, a map[string]any, costs no
// allocation.
package boxed

import (
	"maps"
	"sync"
	"sync/atomic"
)

// Max is how many strings a Strings keeps; beyond, strings are boxed on
// each call.
const Max = 4096

// Strings boxes a small, slowly growing set of strings, such as service
// names. Reads are lock-free, from a map replaced whole when a new string
// comes.
type Strings struct {
	boxes atomic.Pointer[map[string]any]
	mu    sync.Mutex // serializes additions
}

// Box returns s as an interface value, the same one for every call with
// the same s.
func (b *Strings) Box(s string) any {
	if boxes := b.boxes.Load(); boxes != nil {
		if boxed, ok := (*boxes)[s]; ok {
			return boxed
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	old := b.boxes.Load()
	if old != nil && len(*old) >= Max {
		return s
	}
	next := make(map[string]any, 1)
	if old != nil {
		next = maps.Clone(*old)
	}
	if boxed, ok := next[s]; ok {
		return boxed
	}
	next[s] = s
	b.boxes.Store(&next)
	return next[s]
}

// Len returns how many strings are kept boxed.
func (b *Strings) Len() int {
	if boxes := b.boxes.Load(); boxes != nil {
		return len(*boxes)
	}
	return 0
}
