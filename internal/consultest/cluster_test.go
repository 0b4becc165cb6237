package consultest_test

import (
	"testing"
	"time"

	"github.com/caddymesh/caddymesh/internal/consultest"
	"github.com/caddymesh/caddymesh/internal/meshtest"
)

// TestClusterElectsAnotherLeaderAndKeepsItsCatalog starts three servers and
// a client agent, registers an instance through the client, kills the
// leader, and checks that another server leads with the instance still in
// the catalog; then that a client agent restarted with a fresh data dir
// comes back under its node name with another node ID.
func TestClusterElectsAnotherLeaderAndKeepsItsCatalog(t *testing.T) {
	started := time.Now()
	cluster, err := consultest.StartCluster(consultest.ClusterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Stop)
	client, err := consultest.Start(consultest.Options{ClientOf: cluster.Servers[0]})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(client.Stop)
	t.Logf("three servers and a client agent up in %s", time.Since(started))
	client.Register(t, consultest.Instance{Service: "web", ID: "web-1", Port: 8080})
	awaitInstances(t, cluster.Servers[1], "web", 1)

	leader, err := cluster.Leader()
	if err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	leader.Kill()
	var next *consultest.Agent
	meshtest.Eventually(t, 20*time.Second, "another server leads", func() bool {
		next, err = cluster.Leader()
		return err == nil && next != leader
	})
	t.Logf("%s led, killed; %s leads %s later", leader.Node(), next.Node(), time.Since(killed))
	awaitInstances(t, next, "web", 1)
	if err := leader.Restart(); err != nil {
		t.Fatal(err)
	}

	before := nodeID(t, client)
	if err := client.RestartWithFreshDataDir(); err != nil {
		t.Fatal(err)
	}
	if after := nodeID(t, client); after == before || after == "" {
		t.Errorf("node ID %q before the fresh data dir, %q after: want a new one", before, after)
	}
}

func nodeID(t *testing.T, a *consultest.Agent) string {
	t.Helper()
	self, err := a.Client.Agent().Self()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := self["Config"]["NodeID"].(string)
	return id
}

// awaitInstances waits until a's catalog lists n passing instances of
// service.
func awaitInstances(t *testing.T, a *consultest.Agent, service string, n int) {
	t.Helper()
	meshtest.Eventually(t, 20*time.Second, "the catalog lists the instances", func() bool {
		entries, _, err := a.Client.Health().Service(service, "", true, nil)
		return err == nil && len(entries) == n
	})
}
