package lbpolicy

import (
	"sync/atomic"
)

// schedule is one cycle of nginx's smooth weighted round robin, computed
// once, and a cursor that walks it. Picking is an atomic increment and an
// index: every slot of the cycle is taken by exactly one pick, however
// many goroutines pick at once, so over any k whole cycles each member is
// picked exactly k times its weight.
type schedule struct {
	slots  []uint32 // member index of each pick of the cycle
	cursor atomic.Uint64
}

// newSchedule computes the cycle for members with the given weights. A
// member of weight 0 has no slot. Weights are divided by their greatest
// common divisor first: the sequence of k·w is that of w, repeated k times.
func newSchedule(weights []int) *schedule {
	reduced, total := reduce(weights)
	current := make([]int, len(weights))
	slots := make([]uint32, 0, total)
	for range total {
		best := -1
		for i, w := range reduced {
			if w == 0 {
				continue
			}
			current[i] += w
			if best < 0 || current[i] > current[best] {
				best = i
			}
		}
		current[best] -= total
		slots = append(slots, uint32(best))
	}
	return &schedule{slots: slots}
}

// reduce divides weights by their greatest common divisor and returns
// them with their sum.
func reduce(weights []int) ([]int, int) {
	divisor := 0
	for _, w := range weights {
		divisor = gcd(divisor, w)
	}
	reduced := make([]int, len(weights))
	total := 0
	for i, w := range weights {
		if divisor > 0 {
			reduced[i] = w / divisor
		}
		total += reduced[i]
	}
	return reduced, total
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// pick returns the member of the next slot that usable accepts, or -1 when
// it accepts none in a whole cycle. A refused slot is used up, so the
// refused member's share goes to the others in proportion to their
// weights, and it gets its own share back, with no burst, as soon as it is
// accepted again.
func (s *schedule) pick(usable func(member int) bool) int {
	n := uint64(len(s.slots))
	for range n {
		member := int(s.slots[(s.cursor.Add(1)-1)%n])
		if usable(member) {
			return member
		}
	}
	return -1
}

// upcoming takes the next slot of the cycle and appends its member, and
// the members of the slots after it, n in all (fewer in a shorter cycle),
// to members.
func (s *schedule) upcoming(members []int, n int) []int {
	size := uint64(len(s.slots))
	if size == 0 {
		return members
	}
	first := s.cursor.Add(1) - 1
	for k := range min(uint64(n), size) {
		members = append(members, int(s.slots[(first+k)%size]))
	}
	return members
}

// skip uses up the next n slots, those of members refused after upcoming
// named them.
func (s *schedule) skip(n int) {
	if n > 0 {
		s.cursor.Add(uint64(n))
	}
}
