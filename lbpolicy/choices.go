package lbpolicy

import "math/rand/v2"

// drawsBeforeScan is how many random draws twoChoices makes for a usable
// member before it scans for one: draws suffice unless most members are
// unusable.
const drawsBeforeScan = 4

// twoChoices returns two distinct members of 0..n-1 that usable accepts,
// drawn uniformly at random (the "power of two choices"); second is -1
// when usable accepts only one member, and both are -1 when it accepts
// none. It asks usable about a few members, and only when those are
// refused scans them all, from a random place.
func twoChoices(n int, usable func(member int) bool) (first, second int) {
	first = drawUsable(n, -1, usable)
	if first < 0 {
		return -1, -1
	}
	return first, drawUsable(n, first, usable)
}

// drawUsable returns a member other than except (-1 for none) that usable
// accepts, at random, or -1.
func drawUsable(n, except int, usable func(member int) bool) int {
	others := n
	if except >= 0 {
		others--
	}
	if others <= 0 {
		return -1
	}
	for range drawsBeforeScan {
		i := rand.IntN(others)
		if except >= 0 && i >= except {
			i++
		}
		if usable(i) {
			return i
		}
	}
	start := rand.IntN(n)
	for k := range n {
		if i := (start + k) % n; i != except && usable(i) {
			return i
		}
	}
	return -1
}
