package svcname

import (
	"strings"
	"testing"
)

func TestNamesFollowOneRule(t *testing.T) {
	for name, valid := range map[string]bool{
		"greeter": true, "orders_v2": true, "a": true, "A-1": true, "-x": true, "x_": true,
		"go.micro.api.greeter": true, "a.b": true, strings.Repeat("a", 256): true,
		strings.Repeat("a.", 127) + "ab": true,
		"":                               false, ".": false, "..": false, ".x": false, "x.": false, "a..b": false, "../etc/passwd": false,
		"x/../y": false, "a/b": false, "x y": false, "x%2F": false, "x?y": false, "x#y": false, "x&y=1": false,
		"é": false, strings.Repeat("a", 257): false,
	} {
		if Valid(name) != valid {
			t.Errorf("Valid(%q) = %v, want %v", name, !valid, valid)
		}
	}
}

func BenchmarkValid(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		Valid("go.micro.api.greeter")
	}
}
