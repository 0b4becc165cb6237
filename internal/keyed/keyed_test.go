package keyed

import (
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"
)

type counter struct{ n int }

func newStore(maxKeys int) *Store[*counter] {
	return New(maxKeys, time.Minute, func() *counter { return new(counter) })
}

func TestAcquireSharesAnEntryPerKey(t *testing.T) {
	s := newStore(100)
	now := time.Now()
	a := s.Acquire("alice", now)
	a.Value.n++
	a.Release()
	again := s.Acquire("alice", now)
	defer again.Release()
	if again != a || again.Value.n != 1 {
		t.Error("a key's second Acquire did not find its entry")
	}
	if s.Acquire("bob", now) == a {
		t.Error("two keys share an entry")
	}
}

func TestSweepForgetsOnlyIdleUnusedKeys(t *testing.T) {
	s := newStore(100)
	start := time.Now()
	s.Acquire("idle", start).Release()
	busy := s.Acquire("busy", start)
	s.Acquire("recent", start.Add(50*time.Second)).Release()
	s.Sweep(start.Add(61 * time.Second))
	if s.Len() != 2 {
		t.Fatalf("%d keys after the sweep, want busy and recent", s.Len())
	}
	busy.Release()
	s.Sweep(start.Add(200 * time.Second))
	if s.Len() != 0 {
		t.Errorf("%d keys left, want none", s.Len())
	}
}

func TestAFloodOfDistinctKeysStaysBounded(t *testing.T) {
	const maxKeys, flood = 10_000, 100_000 // mesh_limit's test floods a million through its handler
	s := newStore(maxKeys)
	now := time.Now()
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range flood {
		e := s.Acquire("key-"+strconv.Itoa(i), now)
		if e == nil {
			t.Fatalf("key %d refused though every other key is idle", i)
		}
		e.Release()
	}
	if n := s.Len(); n > maxKeys+shardCount {
		t.Errorf("%d keys held after %d, want at most about %d", n, flood, maxKeys)
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	if grown := int64(after.HeapAlloc) - int64(before.HeapAlloc); grown > 8<<20 {
		t.Errorf("heap grew by %d MiB for %d keys, want a bound near %d keys' worth", grown>>20, flood, maxKeys)
	}
}

func TestAFullShardOfBusyKeysRefusesNewOnes(t *testing.T) {
	s := newStore(shardCount) // one key per shard
	now := time.Now()
	held := map[uint64]*Entry[*counter]{}
	refused := 0
	for i := range 10 * shardCount {
		key := "k" + strconv.Itoa(i)
		e := s.Acquire(key, now)
		if e == nil {
			refused++
			continue
		}
		held[uint64(i)] = e // never released
	}
	if len(held) != shardCount || refused != 9*shardCount {
		t.Errorf("held %d and refused %d, want every shard's one key held and the rest refused", len(held), refused)
	}
}

func TestAcquireOfAKnownKeyDoesNotAllocate(t *testing.T) {
	s := newStore(100)
	now := time.Now()
	s.Acquire("alice", now).Release()
	if allocs := testing.AllocsPerRun(1000, func() { s.Acquire("alice", now).Release() }); allocs != 0 {
		t.Errorf("Acquire allocates %v times, want 0", allocs)
	}
}

func TestConcurrentUseWithSweeps(t *testing.T) {
	s := newStore(256)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 20_000 {
				if e := s.Acquire(strconv.Itoa((g*7919+i)%1000), time.Now()); e != nil {
					e.Release()
				}
			}
		})
	}
	wg.Go(func() {
		for range 200 {
			s.Sweep(time.Now().Add(2 * time.Minute))
		}
	})
	wg.Wait()
	held := 0
	s.Range(func(e *Entry[*counter]) {
		if e.users.Load() != 0 {
			held++
		}
	})
	if held != 0 {
		t.Errorf("%d entries still held after every Release", held)
	}
}
