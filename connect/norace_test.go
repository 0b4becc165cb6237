//go:build !race

package connect_test

// loadDivisor divides the rotation test's load: 1, the full load.
const loadDivisor = 1
