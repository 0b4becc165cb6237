// Package pebbletest runs Pebble, Let's Encrypt's ACME test server, for
// tests: the pinned Pebble (internal/tools/pebble), built once and cached
// by the go command, on free loopback ports, validating challenges for
// real against the ports the test names, with names resolved by a DNS
// server of the test's own that answers 127.0.0.1 for every name.
package pebbletest

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/caddymesh/caddymesh/internal/meshtest"
)

// Pebble is a running Pebble.
type Pebble struct {
	// Directory is the URL of its ACME directory, for Caddy's acme_ca.
	Directory string
	// RootFile is the PEM file of the CA that signs Pebble's own TLS
	// certificate, for Caddy's acme_ca_root.
	RootFile string

	management string
	log        *syncBuffer
}

// Start runs Pebble, validating HTTP-01 on httpPort and TLS-ALPN-01 on
// tlsPort of 127.0.0.1, until the test ends.
func Start(t testing.TB, httpPort, tlsPort int) *Pebble {
	t.Helper()
	binary, module := build(t)
	dnsAddr := serveDNS(t)
	listen, management := freeAddr(), freeAddr()
	config := map[string]any{"pebble": map[string]any{
		"listenAddress": listen, "managementListenAddress": management,
		"certificate": filepath.Join(module, "test/certs/localhost/cert.pem"),
		"privateKey":  filepath.Join(module, "test/certs/localhost/key.pem"),
		"httpPort":    httpPort, "tlsPort": tlsPort,
	}}
	configFile := filepath.Join(t.TempDir(), "pebble.json")
	data, _ := json.Marshal(config)
	if err := os.WriteFile(configFile, data, 0o600); err != nil {
		t.Fatal(err)
	}
	p := &Pebble{
		Directory:  "https://" + listen + "/dir",
		RootFile:   filepath.Join(module, "test/certs/pebble.minica.pem"),
		management: management,
		log:        new(syncBuffer),
	}
	cmd := exec.Command(binary, "-config", configFile, "-dnsserver", dnsAddr, "-strict=false")
	cmd.Env = append(os.Environ(), "PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0", "PEBBLE_AUTHZREUSE=0")
	cmd.Stdout, cmd.Stderr = p.log, p.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(p.Log(), "Listening on") {
		if time.Now().After(deadline) {
			t.Fatalf("pebble did not start:\n%s", p.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return p
}

// Orders is how many orders Pebble has taken.
func (p *Pebble) Orders() int { return strings.Count(p.Log(), "Added order") }

// Serials are the serial numbers of the certificates Pebble issued.
func (p *Pebble) Serials() []string {
	var serials []string
	for line := range strings.Lines(p.Log()) {
		if _, after, ok := strings.Cut(line, "Issued certificate serial "); ok {
			serial, _, _ := strings.Cut(after, " ")
			serials = append(serials, serial)
		}
	}
	return serials
}

// Roots is the pool of the root that signs the certificates Pebble issues,
// which Pebble generates at start and serves on its management API: a
// client trusting only it verifies that a certificate came from Pebble.
func (p *Pebble) Roots(t testing.TB) *x509.CertPool {
	t.Helper()
	pem, err := os.ReadFile(p.RootFile)
	if err != nil {
		t.Fatal(err)
	}
	management := x509.NewCertPool()
	management.AppendCertsFromPEM(pem)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: management}}}
	defer client.CloseIdleConnections()
	resp, err := client.Get("https://" + p.management + "/roots/0")
	if err != nil {
		t.Fatalf("pebble's root: %v", err)
	}
	defer resp.Body.Close()
	root, err := io.ReadAll(resp.Body)
	roots := x509.NewCertPool()
	if err != nil || resp.StatusCode != http.StatusOK || !roots.AppendCertsFromPEM(root) {
		t.Fatalf("pebble's root: %s %v %q", resp.Status, err, root)
	}
	return roots
}

// Log is what Pebble wrote so far.
func (p *Pebble) Log() string { return p.log.String() }

// build returns the path of the pinned Pebble, building it the first time,
// and the directory of its module, which holds its test certificates.
func build(t testing.TB) (binary, module string) {
	t.Helper()
	_, self, _, _ := runtime.Caller(0)
	dir := filepath.Join(filepath.Dir(self), "..", "tools", "pebble")
	run := func(args ...string) string {
		cmd := exec.Command("go", args...)
		cmd.Dir = dir
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("go %s in %s: %v\n%s", strings.Join(args, " "), dir, err, stderr.Bytes())
		}
		return strings.TrimSpace(string(out))
	}
	return run("tool", "-n", "pebble"), run("list", "-m", "-f", "{{.Dir}}", "github.com/letsencrypt/pebble/v2")
}

// serveDNS answers 127.0.0.1 to every A query (and nothing to others)
// until the test ends, and returns its address.
func serveDNS(t testing.TB) string {
	t.Helper()
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server := &dns.Server{PacketConn: conn, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		for _, q := range r.Question {
			if q.Qtype == dns.TypeA {
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1}, A: net.IPv4(127, 0, 0, 1)})
			}
		}
		_ = w.WriteMsg(m)
	})}
	go func() { _ = server.ActivateAndServe() }()
	t.Cleanup(func() { _ = server.Shutdown() })
	return conn.LocalAddr().String()
}

// syncBuffer is a bytes.Buffer safe for a process's output and a reader.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// freeAddr is a free loopback address: meshtest's free port.
func freeAddr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(meshtest.FreePort())) }
