package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// proxyProcess is a proxy running on core 0.
type proxyProcess struct {
	cmd *exec.Cmd
	log *bytes.Buffer
}

func (p *proxyProcess) pid() int { return p.cmd.Process.Pid }

func (p *proxyProcess) stop() {
	p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-done
	}
}

func (p *proxyProcess) logTail() string {
	s := p.log.String()
	return s[max(0, len(s)-2000):]
}

// startProxy writes the setup's config and starts its proxy on core 0.
func startProxy(s setup, port int, b bench) (*proxyProcess, error) {
	dir, err := filepath.Abs(filepath.Join(*workDir, strings.Map(fileSafe, s.name)))
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	config := filepath.Join(dir, s.proxy+".conf")
	if err := os.WriteFile(config, []byte(s.config(port, b)), 0o644); err != nil {
		return nil, err
	}
	var args []string
	switch s.proxy {
	case "caddy":
		args = []string{*caddyBinary, "run", "--adapter", "caddyfile", "--config", config}
	case "nginx":
		args = []string{"nginx", "-p", dir, "-e", "stderr", "-c", config}
	case "haproxy":
		args = []string{"haproxy", "-db", "-f", config}
	}
	p := &proxyProcess{cmd: exec.Command("taskset", append([]string{"-c", "0"}, args...)...), log: new(bytes.Buffer)}
	p.cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return p, p.cmd.Start() // taskset execs the proxy: the pid is the proxy's
}

func fileSafe(r rune) rune {
	if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
		return r
	}
	return '_'
}

// caddyGlobals are the global options of every Caddy setup.
func caddyGlobals() string {
	return "admin off\n\tpersist_config off" + ifH2("\n\tservers {\n\t\tprotocols h1 h2c\n\t}")
}

func caddyStatic(port int, b bench, policy string) string {
	return fmt.Sprintf(`{
	%s
}
:%d {
	reverse_proxy %s {
		lb_policy %s
	}
}
`, caddyGlobals(), port, strings.Join(b.upstreams, " "), policy)
}

func caddyConsul(port int, b bench, policy string) string {
	return fmt.Sprintf(`{
	%s
	mesh {
		consul {
			address %s
		}
	}
}
:%d {
	reverse_proxy {
		dynamic consul %s
		lb_policy %s
	}
}
`, caddyGlobals(), b.consul, port, b.service, policy)
}

func nginx(port int, b bench, balance string) string {
	var servers strings.Builder
	for _, u := range b.upstreams {
		fmt.Fprintf(&servers, "\t\tserver %s;\n", u)
	}
	return fmt.Sprintf(`worker_processes 1;
daemon off;
master_process off;
pid nginx.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
	access_log off;
	keepalive_requests 1000000;
	client_body_temp_path tmp;
	proxy_temp_path tmp;
	upstream backends {
		%s
%s		keepalive %d;
	}
	server {
		listen 127.0.0.1:%d%s;
		location / {
			proxy_pass http://backends;
			proxy_http_version 1.1;
			proxy_set_header Connection "";
		}
	}
}
`, balance, servers.String(), idleConnections(b), port, ifH2(" http2"))
}

// idleConnections is how many idle upstream connections nginx keeps: its
// cache is shared by all upstreams, so it needs one or more per upstream,
// as Caddy and HAProxy keep per upstream, for requests spread over every
// upstream to find one, and one per request in flight.
func idleConnections(b bench) int {
	inFlight := *connections
	if *h2 {
		inFlight *= h2Streams
	}
	return 2*len(b.upstreams) + inFlight
}

func haproxy(port int, b bench, balance string) string {
	var servers strings.Builder
	for i, u := range b.upstreams {
		fmt.Fprintf(&servers, "\tserver s%d %s\n", i, u)
	}
	return fmt.Sprintf(`global
	nbthread 1
	maxconn 4096
defaults
	mode http
	option http-keep-alive
	http-reuse always
	timeout connect 5s
	timeout client 30s
	timeout server 30s
frontend proxy
	bind 127.0.0.1:%d%s
	default_backend backends
backend backends
	%s
%s`, port, ifH2(" proto h2"), balance, servers.String())
}
