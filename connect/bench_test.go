package connect

import (
	"crypto/x509"
	"fmt"
	"testing"
	"time"

	"github.com/caddymesh/caddymesh/internal/meshtest"
	"github.com/caddymesh/caddymesh/internal/pool"
	"github.com/caddymesh/caddymesh/internal/spiffe"
)

// The functions of the handshake path: the certificate presented, the
// server's identity, the destination of a new connection, the root's
// constraint, and mesh_identity's trust domain lookup.

func BenchmarkGetCertificate(b *testing.B) {
	g := &CertGetter{held: heldFor(b)}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := g.GetCertificate(b.Context(), nil); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerifyServer(b *testing.B) {
	ca := meshtest.NewCA(b, "connect-ca")
	tr := &Transport{held: &held{roots: new(rootsWatch)}}
	tr.held.roots.current.Store(rootsOf(b, ca, "td.consul"))
	cs := state(b, ca.Service(b, "spiffe://td.consul/ns/default/dc/dc1/svc/db"))
	want := spiffe.ServiceID{TrustDomain: "td.consul", Partition: "default", Namespace: "default", Datacenter: "dc1", Service: "db"}
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		if err := tr.verifyServer(cs, want, now); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDestination(b *testing.B) {
	for _, size := range []int{1, 16, 256} {
		b.Run(fmt.Sprintf("instances=%d", size), func(b *testing.B) {
			instances := make([]pool.Instance, size)
			for i := range instances {
				instances[i] = pool.Instance{Dial: fmt.Sprintf("10.0.%d.%d:21000", i/256, i%256),
					Identity: &spiffe.ServiceID{Namespace: "default", Datacenter: "dc1", Service: "db"}}
			}
			tr := &Transport{held: heldFor(b)}
			ctx := attemptContext(pool.NewSnapshot(instances))
			last := instances[size-1].Dial
			b.ReportAllocs()
			for b.Loop() {
				if _, err := tr.destination(ctx, last); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkRootStillListed(b *testing.B) {
	ca := meshtest.NewCA(b, "connect-ca")
	p := &CAPool{held: &held{roots: new(rootsWatch)}}
	listed := rootsOf(b, ca, "td.consul")
	p.held.roots.current.Store(listed)
	constraint := p.stillListed(listed.certs[0])
	chain := []*x509.Certificate{listed.certs[0]}
	b.ReportAllocs()
	for b.Loop() {
		if err := constraint(chain); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkTrustDomainOf(b *testing.B) {
	ca := meshtest.NewCA(b, "connect-ca")
	root := rootsOf(b, ca, "td.consul").certs[0]
	owner := new(int)
	spiffe.Trusted.Set(owner, "td.consul", [][]byte{root.Raw})
	b.Cleanup(func() { spiffe.Trusted.Set(owner, "", nil) })
	b.ReportAllocs()
	for b.Loop() {
		if domain, ok := spiffe.Trusted.TrustDomainOf(root); !ok || domain != "td.consul" {
			b.Fatal(domain, ok)
		}
	}
}
