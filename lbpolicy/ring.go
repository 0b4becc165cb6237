package lbpolicy

import (
	"cmp"
	"math/bits"
	"slices"

	"github.com/zeebo/xxh3"
)

// A ring is a consistent-hash ring with multi-probe lookup (Appleton and
// O'Reilly, "Multi-probe consistent hashing", 2015). Each member owns
// points in proportion to its weight; a key is hashed to two positions,
// and belongs to the owner of the point nearest clockwise of either. Two
// probes halve the variance of the members' shares for the same number of
// points, and keep the ring's defining property: when a member leaves, only
// the keys that were on it move.
//
// Lookup is O(1): the points are laid out by a counting sort on their top
// bits, whose bucket offsets double as an index, so a position is found by
// one index load and a scan of a few points in one cache line. Positions
// are compared by their top 32 bits, whatever the ring's size, so that the
// members that stay decide ties as they did; a point takes 4 bytes (its
// bucket's bits are implied by where it lies, and make room for its
// owner's index): the ring of 256 upstreams at the default 1,024 points
// each takes 1 MiB with an index of 256 KiB, half what it took at 8 bytes
// a point (on a core with 1 MiB of L2 it still misses it; BENCHMARKS.md).
type ring struct {
	// points are bucket by bucket, clockwise; each holds the bits of its
	// position below its bucket's (of the top 32) in its high bits and its
	// owner's member index in its low bucketBits, sorted within a bucket
	// by position and, for points at one position, by their owners'
	// identities.
	points []uint32
	// start[b] is the index of the first point of bucket b or a later
	// one; start has one more entry than there are buckets.
	start []uint32
	// bucketBits is how many top bits of a position name its bucket, and
	// how many low bits of a point name its owner.
	bucketBits uint
	// ownerMask keeps the low bucketBits bits of a point.
	ownerMask uint32
	// members is the number of members that own points.
	members int
}

const (
	// maxMembers is the largest number of members a ring can hold.
	maxMembers = 1 << 16
	// maxPoints caps the size of a ring (2 MiB of points, built in about
	// 20 ms); beyond it, the points per unit of weight are scaled down, as
	// happens at the default from 512 equal upstreams on.
	maxPoints = 1 << 19
	// pointsPerBucket is, as a power of two, the fewest points a bucket
	// holds on average when the ring has more points than members: 4 to 8,
	// 16 to 32 bytes.
	pointsPerBucket = 3
	// maxBucketBits caps the index at 2^17 buckets (512 KiB).
	maxBucketBits = 17
	// defaultPoints is the default number of points per unit of weight:
	// with two probes, it keeps the busiest of 100 equal upstreams within
	// 7% of the mean share.
	defaultPoints = 1024
	// golden is 2^64 divided by the golden ratio, the step of the
	// splitmix64 sequence.
	golden = 0x9e3779b97f4a7c15
)

// ringMember is a member of a ring to be built: an identity that places
// its points, and a weight.
type ringMember struct {
	id     string
	weight int
}

// newRing builds a ring in which each member owns pointsPerWeight points
// per unit of the smallest positive weight among members, so shares follow
// weights however large they are. Members with weight 0 own no point.
func newRing(members []ringMember, pointsPerWeight int) *ring {
	counts := pointCounts(members, pointsPerWeight)
	total := 0
	for _, c := range counts {
		total += c
	}
	r := &ring{points: make([]uint32, total)}
	r.bucketBits = uint(min(max(bits.Len(uint(total))-pointsPerBucket, bits.Len(uint(len(members)-1)), 1), maxBucketBits))
	r.ownerMask = 1<<r.bucketBits - 1
	r.start = make([]uint32, 1<<r.bucketBits+1)

	// Counting sort on the top bits: count, offset, place.
	forEachPoint(members, counts, func(member int, p uint32) { r.start[r.bucket(p)+1]++ })
	for b := 1; b < len(r.start); b++ {
		r.start[b] += r.start[b-1]
	}
	next := slices.Clone(r.start[:len(r.start)-1])
	forEachPoint(members, counts, func(member int, p uint32) {
		b := r.bucket(p)
		r.points[next[b]] = p<<r.bucketBits | uint32(member)
		next[b]++
	})
	seeds := make([]uint64, len(members))
	for i, m := range members {
		seeds[i] = xxh3.HashString(m.id)
	}
	for b := range len(r.start) - 1 {
		if bucket := r.points[r.start[b]:r.start[b+1]]; len(bucket) > 1 {
			slices.Sort(bucket) // a few points each
			r.orderTies(bucket, seeds)
		}
	}
	for _, c := range counts {
		if c > 0 {
			r.members++
		}
	}
	return r
}

// orderTies orders the points of a sorted bucket that are at one position
// by their owners' seeds rather than their indexes, which change as other
// members come and go: a few pairs in a large ring.
func (r *ring) orderTies(bucket []uint32, seeds []uint64) {
	for i := 1; i < len(bucket); i++ {
		first := i - 1
		for i < len(bucket) && bucket[i]>>r.bucketBits == bucket[first]>>r.bucketBits {
			i++
		}
		if i-first > 1 {
			slices.SortFunc(bucket[first:i], func(p, q uint32) int {
				return cmp.Compare(seeds[p&r.ownerMask], seeds[q&r.ownerMask])
			})
		}
	}
}

// bucket returns the bucket of a position.
func (r *ring) bucket(position uint32) uint32 {
	return position >> (32 - r.bucketBits)
}

// pointCounts returns how many points each member owns.
func pointCounts(members []ringMember, pointsPerWeight int) []int {
	smallest := 0
	for _, m := range members {
		if m.weight > 0 && (smallest == 0 || m.weight < smallest) {
			smallest = m.weight
		}
	}
	counts := make([]int, len(members))
	if smallest == 0 {
		return counts
	}
	wanted := 0
	for i, m := range members {
		counts[i] = max(pointsPerWeight*m.weight/smallest, min(m.weight, 1))
		wanted += counts[i]
	}
	if wanted > maxPoints {
		for i, m := range members {
			counts[i] = max(counts[i]*maxPoints/wanted, min(m.weight, 1))
		}
	}
	return counts
}

// forEachPoint calls f with every point of every member: positions from
// the splitmix64 sequence seeded by the hash of the member's identity.
func forEachPoint(members []ringMember, counts []int, f func(member int, position uint32)) {
	for i, m := range members {
		seed := xxh3.HashString(m.id)
		for k := range counts[i] {
			f(i, uint32(mix(seed+uint64(k)*golden)>>32))
		}
	}
}

// mix is the splitmix64 finalizer: a bijection that spreads nearby inputs
// over the whole range.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

// successor returns the index of the first point at or clockwise of
// position, and how far clockwise of position it is.
func (r *ring) successor(position uint32) (int, uint32) {
	b := r.bucket(position)
	target := position << r.bucketBits
	i, end := r.start[b], r.start[b+1]
	for i < end && r.points[i] < target {
		i++
	}
	if i < end {
		return int(i), (r.points[i] - target) >> r.bucketBits
	}
	return r.firstAfter(b, position)
}

// firstAfter returns the first point of the buckets after bucket b,
// clockwise, and how far clockwise of position (in bucket b) it is.
func (r *ring) firstAfter(b, position uint32) (int, uint32) {
	i := r.start[b+1]
	if int(i) == len(r.points) {
		i, b = 0, 0
		for r.start[b+1] == 0 {
			b++
		}
	} else {
		for b++; r.start[b+1] == i; b++ {
		}
	}
	return int(i), r.position(b, i) - position
}

// position returns the position of point i, of bucket b.
func (r *ring) position(b, i uint32) uint32 {
	return b<<(32-r.bucketBits) | r.points[i]>>r.bucketBits
}

// home returns the index of the point a key hash belongs to: of its probes'
// successors, the nearest (the first probe's, when they are as near). Both
// probes' positions are computed first, so that their memory loads overlap.
func (r *ring) home(hash uint64) int {
	first, second := uint32(hash>>32), uint32(mix(hash+golden)>>32)
	i, toFirst := r.successor(first)
	j, toSecond := r.successor(second)
	if toSecond < toFirst {
		return j
	}
	return i
}

// pick returns the member a key hash belongs to, or, when usable refuses
// it, the next member clockwise that usable accepts; -1 when it accepts
// none. Each member is asked at most once.
func (r *ring) pick(hash uint64, usable func(member int) bool) int {
	if len(r.points) == 0 {
		return -1
	}
	i := r.home(hash)
	if member := r.owner(i); usable(member) {
		return member
	}
	return r.walk(i, usable)
}

// nearest appends to members the member a key hash belongs to and the
// next distinct members clockwise, n in all (fewer on a ring of fewer
// members): those pick would try, in order.
func (r *ring) nearest(hash uint64, members []int, n int) []int {
	if len(r.points) == 0 || n == 0 {
		return members
	}
	i := r.home(hash)
	members = append(members, r.owner(i))
	if n == 1 {
		return members
	}
	named := 1
	r.walk(i, func(member int) bool { // refusing each member it is shown but the n-th
		members = append(members, member)
		named++
		return named == n
	})
	return members
}

// walk returns the first member clockwise of point i, whose owner usable
// refused, that usable accepts; -1 when it accepts none.
func (r *ring) walk(i int, usable func(member int) bool) int {
	var refused memberSet
	if refused.add(r.owner(i)) == r.members {
		return -1
	}
	for range len(r.points) - 1 {
		if i++; i == len(r.points) {
			i = 0
		}
		member := r.owner(i)
		if refused.has(member) {
			continue
		}
		if usable(member) {
			return member
		}
		if refused.add(member) == r.members {
			return -1
		}
	}
	return -1
}

// owner returns the member that owns point i.
func (r *ring) owner(i int) int {
	return int(r.points[i] & r.ownerMask)
}

// memberSet is a set of member indexes that does not allocate until it
// holds more than a few: a walk of the ring rarely refuses more than one.
type memberSet struct {
	few  [8]int
	n    int
	rest map[int]struct{}
}

func (s *memberSet) has(member int) bool {
	for _, m := range s.few[:min(s.n, len(s.few))] {
		if m == member {
			return true
		}
	}
	_, ok := s.rest[member]
	return ok
}

// add adds a member not in the set and returns the set's new size.
func (s *memberSet) add(member int) int {
	if s.n < len(s.few) {
		s.few[s.n] = member
	} else {
		if s.rest == nil {
			s.rest = make(map[int]struct{})
		}
		s.rest[member] = struct{}{}
	}
	s.n++
	return s.n
}
