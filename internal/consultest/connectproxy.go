package consultest

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// ConnectProxy is Consul's built-in Connect proxy (`consul connect proxy`),
// from the same pinned binary as the agent: the Connect peer caddymesh is
// tested against.
type ConnectProxy struct {
	cmd    *exec.Cmd
	exited chan error
	log    string
}

// StartConnectProxy runs `consul connect proxy <args>` against the agent,
// until the test ends. For the inbound sidecar of a service:
// -service db -service-addr 127.0.0.1:<app> -listen 127.0.0.1:<port> -register;
// for a caller: -service web -upstream api:<local port>.
func (a *Agent) StartConnectProxy(t testing.TB, args ...string) *ConnectProxy {
	t.Helper()
	p := &ConnectProxy{exited: make(chan error, 1), log: filepath.Join(t.TempDir(), "proxy.log")}
	logFile, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	p.cmd = exec.Command(a.binary, append([]string{"connect", "proxy", "-http-addr", a.Addr, "-log-level", "debug"}, args...)...)
	p.cmd.Env = append(os.Environ(), "CONSUL_HTTP_TOKEN="+a.token)
	p.cmd.Stdout, p.cmd.Stderr = logFile, logFile
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(p.Stop)
	return p
}

// Stop stops the proxy, letting it deregister what it registered, and
// waits for it to exit.
func (p *ConnectProxy) Stop() {
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
	p.cmd = nil
}

// Log returns what the proxy logged.
func (p *ConnectProxy) Log() string {
	data, _ := os.ReadFile(p.log)
	return string(data)
}
