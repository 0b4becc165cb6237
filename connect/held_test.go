package connect

import (
	"context"
	"crypto/tls"
	"testing"
	"time"

	"github.com/caddymesh/caddymesh/internal/meshtest"
)

// A dial or handshake after the module's Cleanup (an active health check in
// flight at a config unload) must not find nil watches: a panic in the
// transport's dial goroutine would end the process.
func TestAModuleCleanedUpStillAnswers(t *testing.T) {
	ca := meshtest.NewCA(t, "connect-ca")
	l, err := parseLeaf(leafOf(t, ca.Service(t, "spiffe://td.consul/ns/default/dc/dc1/svc/api"), "api"))
	if err != nil {
		t.Fatal(err)
	}
	h := &held{roots: new(rootsWatch), leaf: &leafWatch{key: leafKey{Service: "api"}}}
	h.roots.current.Store(rootsOf(t, ca, "td.consul"))
	h.leaf.current.Store(l)
	tr := &Transport{Service: "api", Destination: "db", held: h, base: &tls.Config{}}
	if err := tr.Cleanup(); err != nil {
		t.Fatal(err)
	}
	h.release() // twice: a no-op
	if _, err := h.certificate(time.Now()); err != nil {
		t.Errorf("the last leaf after Cleanup: %v", err)
	}
	want, err := tr.destination(context.Background(), "127.0.0.1:1")
	if err != nil || want.Service != "db" {
		t.Errorf("destination after Cleanup: %v, %v", want, err)
	}
}
