//go:build race

package middleware

// raceEnabled is whether the race detector is on: it makes sync.Pool drop
// items at random, so that allocation counts through a pool are not exact.
const raceEnabled = true
