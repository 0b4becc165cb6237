package meshtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
)

// caddyProcessEnv, when set, makes a test binary run Caddy's command line
// instead of its tests.
const caddyProcessEnv = "CADDYMESH_TEST_RUN_CADDY"

// RunCaddyIfAsked runs Caddy instead of the tests when StartCaddy started
// this test binary as a Caddy process. Call it first in TestMain: the test
// binary holds Caddy's standard modules and caddymesh, as a Caddy built
// with xcaddy does.
func RunCaddyIfAsked() {
	if os.Getenv(caddyProcessEnv) == "" {
		return
	}
	caddycmd.Main()
	os.Exit(0)
}

// CaddyProcess is Caddy running in a process of its own.
type CaddyProcess struct {
	cmd    *exec.Cmd
	exited chan error
	log    string
}

// StartCaddy runs `caddy run` with a Caddyfile and environment variables
// (NAME=value) in a new process, and waits until its admin endpoint, at
// admin (host:port), answers. The test stops it at its end.
func StartCaddy(t testing.TB, caddyfile, admin string, env ...string) *CaddyProcess {
	t.Helper()
	dir := t.TempDir()
	p := &CaddyProcess{exited: make(chan error, 1), log: filepath.Join(dir, "caddy.log")}
	logFile, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	self, err := os.Executable() // not os.Args[0], which caddytest rewrites
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(self, "run", "--config", caddyfile, "--adapter", "caddyfile")
	p.cmd.Env = append(os.Environ(), append(env, caddyProcessEnv+"=1", "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)...)
	p.cmd.Stdout, p.cmd.Stderr = logFile, logFile
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.exited
		p.exited <- nil
	})
	t.Cleanup(func() { // runs first: the log of a failed test's Caddy, for the reason
		if t.Failed() {
			t.Logf("the log of Caddy with admin %s:\n%s", admin, p.Log())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if resp, err := Client.Get("http://" + admin + "/config/"); err == nil {
			resp.Body.Close()
			return p
		}
		select {
		case err := <-p.exited:
			p.exited <- err
			t.Fatalf("caddy exited: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("caddy's admin endpoint %s did not answer in 30s", admin)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop stops Caddy gracefully, as SIGTERM from a supervisor does, waits
// until it exits and returns how long that took.
func (p *CaddyProcess) Stop(t testing.TB) time.Duration {
	t.Helper()
	start := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.exited:
		p.exited <- err
	case <-time.After(60 * time.Second):
		t.Fatal("caddy did not stop within 60s of SIGTERM")
	}
	return time.Since(start)
}

// Kill kills Caddy hard, as a crash or the OOM killer would: no cleanup,
// no deregistration, no drain.
func (p *CaddyProcess) Kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	err := <-p.exited
	p.exited <- err
}

// Log returns what Caddy wrote so far.
func (p *CaddyProcess) Log() string {
	data, err := os.ReadFile(p.log)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	return string(data)
}
