//go:build !race

package middleware

// raceEnabled is whether the race detector is on.
const raceEnabled = false
