package discovery

import (
	"encoding/json"
	"testing"

	"github.com/caddymesh/caddymesh/internal/consul"
)

// A chain Consul should never send, with nulls, missing nodes or targets,
// is refused with an error, never a panic of the follower's goroutine
// (which would end the process).
func TestOddChainsAreRefusedWithoutPanic(t *testing.T) {
	const resolver = `"resolver:t":{"Type":"resolver","Name":"t","Resolver":{"Target":"t"}}`
	const target = `"Targets":{"t":{"ID":"t","Service":"web","Datacenter":"dc1"}}`
	for name, chain := range map[string]string{
		"a null start node":         `{"StartNode":"resolver:t","Nodes":{"resolver:t":null},` + target + `}`,
		"a missing start node":      `{"StartNode":"nope","Nodes":{` + resolver + `},` + target + `}`,
		"a route to a null node":    `{"StartNode":"router:web","Nodes":{"router:web":{"Type":"router","Name":"web","Routes":[{"Definition":{},"NextNode":"x"}]},"x":null},` + target + `}`,
		"a route with no node":      `{"StartNode":"router:web","Nodes":{"router:web":{"Type":"router","Name":"web","Routes":[{"Definition":{},"NextNode":"x"}]}},` + target + `}`,
		"a null route":              `{"StartNode":"router:web","Nodes":{"router:web":{"Type":"router","Name":"web","Routes":[null]}},` + target + `}`,
		"a null split":              `{"StartNode":"splitter:web","Nodes":{"splitter:web":{"Type":"splitter","Name":"web","Splits":[null]},` + resolver + `},` + target + `}`,
		"a split to a null node":    `{"StartNode":"splitter:web","Nodes":{"splitter:web":{"Type":"splitter","Name":"web","Splits":[{"Weight":100,"NextNode":"x"}]},"x":null},` + target + `}`,
		"no splits":                 `{"StartNode":"splitter:web","Nodes":{"splitter:web":{"Type":"splitter","Name":"web","Splits":[]}},` + target + `}`,
		"a null target":             `{"StartNode":"resolver:t","Nodes":{` + resolver + `},"Targets":{"t":null}}`,
		"a missing target":          `{"StartNode":"resolver:t","Nodes":{` + resolver + `}}`,
		"failover to a missing one": `{"StartNode":"resolver:t","Nodes":{"resolver:t":{"Type":"resolver","Name":"t","Resolver":{"Target":"t","Failover":{"Targets":["gone"]}}}},` + target + `}`,
		"a resolver without one":    `{"StartNode":"resolver:t","Nodes":{"resolver:t":{"Type":"resolver","Name":"t"}},` + target + `}`,
		"a node of no known type":   `{"StartNode":"x","Nodes":{"x":{"Type":"other","Name":"x"}},` + target + `}`,
	} {
		var c consul.CompiledChain
		if err := json.Unmarshal([]byte(chain), &c); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		func() {
			defer func() {
				if p := recover(); p != nil {
					t.Errorf("%s: panic: %v", name, p)
				}
			}()
			if _, err := compileChain(&c, func(*consul.ChainTarget) (targetPool, error) { return noInstances{}, nil }, nil); err == nil {
				t.Errorf("%s: compiled", name)
			}
		}()
	}
	var good consul.CompiledChain
	if err := json.Unmarshal([]byte(`{"StartNode":"resolver:t","Nodes":{`+resolver+`},`+target+`}`), &good); err != nil {
		t.Fatal(err)
	}
	if _, err := compileChain(&good, func(*consul.ChainTarget) (targetPool, error) { return noInstances{}, nil }, nil); err != nil {
		t.Errorf("the default chain: %v", err)
	}
}
