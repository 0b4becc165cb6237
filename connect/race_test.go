//go:build race

package connect_test

// loadDivisor divides the rotation test's load: the race detector makes
// each handshake several times dearer, and the full load would measure that.
const loadDivisor = 4
