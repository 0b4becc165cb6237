package lbpolicy

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/zeebo/xxh3"
)

// keyHashes hashes n random 30-byte keys, from a fixed seed.
func keyHashes(n int) []uint64 {
	r := rand.New(rand.NewPCG(1, 2))
	hashes := make([]uint64, n)
	var key [30]byte
	for i := range hashes {
		for j := range key {
			key[j] = byte(r.UintN(256))
		}
		hashes[i] = xxh3.Hash(key[:])
	}
	return hashes
}

// members returns n members of equal weight named like upstreams.
func members(n int) []ringMember {
	out := make([]ringMember, n)
	for i := range out {
		out[i] = ringMember{id: fmt.Sprintf("10.0.%d.%d:8080", i/256, i%256), weight: 1}
	}
	return out
}

// owners returns the member each hash belongs to.
func owners(r *ring, hashes []uint64, usable func(int) bool) []int {
	out := make([]int, len(hashes))
	for i, h := range hashes {
		out[i] = r.pick(h, usable)
	}
	return out
}

func shares(owners []int, members int) []int {
	counts := make([]int, members)
	for _, o := range owners {
		counts[o]++
	}
	return counts
}

func TestRingBalanceAndMinimalDisruption(t *testing.T) {
	for _, n := range []int{10, 100, 256} {
		t.Run(fmt.Sprintf("%d_upstreams", n), func(t *testing.T) {
			hashes := keyHashes(max(1_000_000, 16_000*n)) // sampling adds under 2.5% to the peak
			all := members(n)
			before := owners(newRing(all, defaultPoints), hashes, allUsable)
			counts := shares(before, n)
			mean := float64(len(hashes)) / float64(n)
			peak := float64(slices.Max(counts)) / mean
			t.Logf("peak/mean share %.3f", peak)
			if peak > 1.07 {
				t.Errorf("peak/mean share %.3f, want at most 1.07", peak)
			}

			const removed = 3
			rest := slices.Clone(all)
			rest[removed].weight = 0 // same indexes, no points
			after := owners(newRing(rest, defaultPoints), hashes, allUsable)
			moved := 0
			for i := range hashes {
				if after[i] != before[i] {
					moved++
					if before[i] != removed {
						t.Fatalf("key %d moved from %d, which stayed", i, before[i])
					}
				}
			}
			t.Logf("removing one moved %.3f of the ideal 1/N", float64(moved)/mean)
			if float64(moved) > 1.10*mean {
				t.Errorf("removing one upstream moved %d keys, want at most 1.10 × %.0f", moved, mean)
			}
		})
	}
}

func allUsable(int) bool { return true }

// Each point keeps only its position's bits below its bucket's; successor
// finds the same point, at the same distance, as a binary search of every
// point by its whole position, across empty buckets and the ring's end too.
func TestRingSuccessorIsTheNearestPointClockwise(t *testing.T) {
	random := rand.New(rand.NewPCG(5, 6))
	for _, ring := range []*ring{newRing(members(3), 2), newRing(members(64), defaultPoints)} {
		var positions []uint32 // of each point, by index
		for b := range uint32(len(ring.start) - 1) {
			for i := ring.start[b]; i < ring.start[b+1]; i++ {
				positions = append(positions, ring.position(b, i))
			}
		}
		if !slices.IsSorted(positions) {
			t.Fatal("points out of order")
		}
		for range 100_000 {
			position := random.Uint32()
			want, _ := slices.BinarySearch(positions, position)
			if want == len(positions) {
				want = 0
			}
			got, distance := ring.successor(position)
			if got != want || distance != positions[want]-position {
				t.Fatalf("successor of %#x: point %d at distance %#x, want %d at %#x", position, got, distance, want, positions[want]-position)
			}
		}
	}
}

func TestRingSharesFollowWeights(t *testing.T) {
	hashes := keyHashes(1_000_000)
	weighted := []ringMember{{"a:80", 1}, {"b:80", 2}, {"c:80", 4}, {"d:80", 0}}
	counts := shares(owners(newRing(weighted, defaultPoints), hashes, allUsable), len(weighted))
	for i, m := range weighted {
		want := float64(len(hashes)) * float64(m.weight) / 7
		if got := float64(counts[i]); got < 0.95*want || got > 1.05*want {
			t.Errorf("%s (weight %d) got %.0f keys, want %.0f ± 5%%", m.id, m.weight, got, want)
		}
	}
}

func TestRingUnavailableUpstream(t *testing.T) {
	hashes := keyHashes(100_000)
	r := newRing(members(10), defaultPoints)
	before := owners(r, hashes, allUsable)
	const down = 4
	during := owners(r, hashes, func(m int) bool { return m != down })
	for i := range hashes {
		if before[i] != down && during[i] != before[i] {
			t.Fatalf("key %d moved from %d to %d while only %d was down", i, before[i], during[i], down)
		}
		if before[i] == down && during[i] == down {
			t.Fatalf("key %d stayed on the unavailable %d", i, down)
		}
	}
	if after := owners(r, hashes, allUsable); !slices.Equal(after, before) {
		t.Error("keys did not come back when the upstream recovered")
	}
}

func TestRingPickAsksEachMemberOnce(t *testing.T) {
	r := newRing(members(50), defaultPoints)
	asked := map[int]int{}
	if m := r.pick(42, func(m int) bool { asked[m]++; return false }); m != -1 {
		t.Errorf("picked %d with nothing usable, want -1", m)
	}
	if len(asked) != 50 {
		t.Errorf("asked %d members, want all 50", len(asked))
	}
	for m, n := range asked {
		if n != 1 {
			t.Errorf("asked member %d %d times, want once", m, n)
		}
	}
	if m := newRing(nil, defaultPoints).pick(42, allUsable); m != -1 {
		t.Errorf("an empty ring picked %d, want -1", m)
	}
}

func TestRingPickDoesNotAllocate(t *testing.T) {
	r := newRing(members(256), defaultPoints)
	down := func(m int) bool { return m%4 != 0 } // three in four refused: walks
	if allocs := testing.AllocsPerRun(1000, func() { r.pick(12345, down) }); allocs != 0 {
		t.Errorf("pick allocates %v times, want 0", allocs)
	}
}

// TestBoundedLoadsWithZipfKeys simulates a pool under constant concurrency
// whose keys follow Zipf(1.01): a few keys are very hot. With bounded loads
// no upstream may hold more than its bound of the requests in flight.
func TestBoundedLoadsWithZipfKeys(t *testing.T) {
	for _, n := range []int{10, 100} {
		t.Run(fmt.Sprintf("%d_upstreams", n), func(t *testing.T) {
			unbounded := simulateInFlight(n, 0)
			bounded := simulateInFlight(n, 1.25)
			t.Logf("peak/mean in flight: %.2f without bounded loads, %.2f with bounded_load 1.25", unbounded, bounded)
			if bounded > 1.30 {
				t.Errorf("peak/mean in flight %.2f with bounded_load 1.25, want at most 1.30", bounded)
			}
			if unbounded < 2 {
				t.Errorf("peak/mean in flight %.2f without bounded loads: the key stream is not skewed enough to test anything", unbounded)
			}
		})
	}
}

// simulateInFlight keeps 40 requests per upstream in flight, the oldest
// finishing as each new one arrives, and returns the highest number one
// upstream ever held over the mean.
func simulateInFlight(n int, factor float64) float64 {
	r := newRing(members(n), defaultPoints)
	keys := rand.NewZipf(rand.New(rand.NewPCG(3, 4)), 1.01, 1, 1_000_000)
	inFlight := 40 * n
	loads := make([]int64, n)
	estimate := newLoadEstimate(loads)
	load := func(m int) int64 { return loads[m] }
	queue := make([]int, 0, inFlight)
	peak := int64(0)
	for step := range 200_000 {
		if len(queue) == inFlight {
			loads[queue[0]]--
			queue = queue[1:]
		}
		estimate.refreshNext(load)
		m := r.pick(mix(keys.Uint64()), func(m int) bool {
			if factor == 0 {
				return true
			}
			estimate.observe(m, loads[m])
			return loads[m] < estimate.capacity(factor, 1, n)
		})
		loads[m]++
		queue = append(queue, m)
		if step > inFlight { // past the ramp-up
			peak = max(peak, slices.Max(loads))
		}
	}
	return float64(peak) / 40
}
