package chaos_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/caddymesh/caddymesh/internal/consultest"
	"github.com/caddymesh/caddymesh/internal/loadgen"
)

// Scenario 7: the client agent that the sidecars and the front share
// stopped with SIGTERM, as a rolling upgrade of Consul agents does: it
// leaves the cluster, taking its node and every service registered through
// it out of the catalog, and comes back with its data dir. With hold_last
// (default 10s) the front keeps its last instances through the gap; with
// hold_last 0 it answers 503 until they are back.
func TestClientAgentLeaves(t *testing.T) {
	server := startAgent(t)
	client, err := consultest.Start(consultest.Options{ClientOf: server})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(client.Stop)
	var ids []string
	for i := range 2 {
		id := fmt.Sprintf("b-%d", i+1)
		startSidecar(t, client.Addr, id, 0)
		ids = append(ids, id)
	}
	awaitPassing(t, server, ids...)
	for _, c := range []struct {
		name     string
		holdLast string
	}{
		{"`hold_last 0`", "0"},
		{"`hold_last` default (10s)", ""},
	} {
		config := readme(client.Addr)
		config.HoldLast = c.holdLast
		f := startFront(t, config.caddyfile, "/")
		awaitRouted(t, f, ids)
		load := loadgen.Start(newClient(t), rate, f.url+"/")
		time.Sleep(500 * time.Millisecond)
		left := time.Now()
		client.Leave()
		time.Sleep(sized(time.Second, 2*time.Second))
		if err := client.Restart(); err != nil {
			t.Fatal(err)
		}
		awaitPassing(t, server, ids...)
		back := time.Since(left)
		awaitRouted(t, f, ids)
		time.Sleep(500 * time.Millisecond)
		result := load.Stop()
		record(t, "7. client agent SIGTERM (leave) and back, "+c.name, result,
			fmt.Sprintf("instances passing in the catalog again %s after the leave", back.Round(10*time.Millisecond)))
		if c.holdLast == "" {
			expectNoFailure(t, result, "while the shared client agent left and came back")
		} else if result.Failed == 0 {
			t.Logf("with hold_last 0 no request failed either: the front saw an error before the empty answer")
		}
		f.proc.Stop(t)
	}
}
