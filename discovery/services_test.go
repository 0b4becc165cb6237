package discovery

import (
	"strings"
	"testing"
)

func TestServiceNamesFromRequestsAreValidated(t *testing.T) {
	for name, valid := range map[string]bool{
		"greeter": true, "orders_v2": true, "a": true, "A-1": true, strings.Repeat("a", 63): true,
		"": false, "-x": false, "x-": false, "a.b": false, "a/b": false, "../x": false, "x y": false,
		"x%2F": false, strings.Repeat("a", 64): false,
	} {
		if validServiceName(name) != valid {
			t.Errorf("validServiceName(%q) = %v, want %v", name, !valid, valid)
		}
	}
	ls := lazySource([]string{"a"}).lazy
	for _, name := range []string{"../etc", "x y", ""} {
		if watch := ls.get(newRequest(), name); watch != nil {
			t.Errorf("a watch for the invalid name %q", name)
		}
	}
	if n := len(*ls.byName.Load()); n != 1 {
		t.Errorf("%d services after requests for invalid names, want the 1 already watched", n)
	}
}
