// Package consultest runs real Consul dev agents for tests: the pinned
// Consul (internal/tools/consul), built once and cached by the go command,
// started on free loopback ports, with helpers to register instances and
// flip their health.
package consultest

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// Binary returns the path of the pinned Consul agent, building it the first
// time (minutes when the module cache is cold, a second afterwards).
func Binary() (string, error) {
	if path := os.Getenv("CADDYMESH_CONSUL"); path != "" {
		return path, nil
	}
	_, self, _, _ := runtime.Caller(0)
	cmd := exec.Command("go", "tool", "-n", "consul")
	cmd.Dir = filepath.Join(filepath.Dir(self), "..", "tools", "consul")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("building consul in %s: %v\n%s", cmd.Dir, err, stderr.Bytes())
	}
	return strings.TrimSpace(string(out)), nil
}

// Options shape an agent.
type Options struct {
	// Datacenter of the agent. Default: dc1.
	Datacenter string
	// HTTPPort of the agent's API. Default: a free port.
	HTTPPort int
	// HCL is extra agent configuration, such as
	// `default_intention_policy = "deny"`.
	HCL []string
	// ManagementToken, when set, turns ACLs on with a default policy of
	// deny, and is the token of the agent and of Client.
	ManagementToken string
	// ClientOf, when set, makes the agent a client agent (not a server, its
	// state in a data dir) that joins ClientOf's datacenter, as an agent on
	// an application's host runs: a dev agent, or a cluster's server, and
	// then every server of its cluster.
	ClientOf *Agent
}

// Agent is a Consul agent on free loopback ports: a dev agent (a single
// server, state in memory), a client agent (Options.ClientOf) or a
// cluster's server (StartCluster), both with their state in a data dir.
type Agent struct {
	// Addr is the host:port of the agent's HTTP API.
	Addr string
	// Client talks to the agent.
	Client *api.Client
	// Datacenter is the agent's datacenter.
	Datacenter string

	hcl     []string
	token   string
	server  *Agent   // the server a client agent joins; nil for a dev agent
	peers   []*Agent // a cluster server's fellow servers; nil otherwise
	expect  int      // a cluster server's bootstrap_expect; 0 otherwise
	node    string
	dataDir string
	binary  string
	ports   ports
	logDir  string
	cmd     *exec.Cmd
	exited  chan error
}

type ports struct{ http, serfLAN, serfWAN, server int }

// Start starts an agent and waits until it has a leader.
func Start(opts Options) (*Agent, error) {
	binary, err := Binary()
	if err != nil {
		return nil, err
	}
	if opts.Datacenter == "" {
		opts.Datacenter = "dc1"
	}
	logDir, err := os.MkdirTemp("", "consultest-")
	if err != nil {
		return nil, err
	}
	a := &Agent{Datacenter: opts.Datacenter, hcl: opts.HCL, token: opts.ManagementToken, binary: binary, logDir: logDir,
		server: opts.ClientOf, node: "node-" + opts.Datacenter, dataDir: filepath.Join(logDir, "data")}
	if a.server != nil {
		a.Datacenter, a.node = a.server.Datacenter, "client-"+filepath.Base(logDir)
	}
	if a.token != "" {
		a.hcl = append(a.hcl, fmt.Sprintf(`acl { enabled = true, default_policy = "deny", tokens { initial_management = %q, agent = %q } }`, a.token, a.token))
	}
	const attempts = 3 // a free port can be taken by someone else before Consul binds it
	for range attempts {
		if a.ports, err = freePorts(); err != nil {
			return nil, err
		}
		if opts.HTTPPort != 0 {
			a.ports.http = opts.HTTPPort
		}
		if err = a.launch(); err == nil {
			return a, nil
		}
	}
	return nil, err
}

// launch starts the agent process on a.ports and waits for a leader.
func (a *Agent) launch() error {
	if err := a.spawn(); err != nil {
		return err
	}
	if err := a.awaitLeader(30 * time.Second); err != nil {
		a.kill()
		return fmt.Errorf("consul agent on %s: %w\n%s", a.Addr, err, a.logTail())
	}
	return nil
}

// modeArgs are the arguments that make the agent a dev agent, a client
// agent or a cluster server.
func (a *Agent) modeArgs() []string {
	switch {
	case a.server != nil:
		args := []string{"agent", "-data-dir", a.dataDir}
		for _, s := range append([]*Agent{a.server}, a.server.peers...) {
			args = append(args, "-retry-join", s.serfLANAddr())
		}
		return args
	case a.expect > 0:
		args := []string{"agent", "-server", "-data-dir", a.dataDir, "-bootstrap-expect", strconv.Itoa(a.expect),
			"-hcl", `performance { raft_multiplier = 1 }`}
		for _, s := range a.peers {
			args = append(args, "-retry-join", s.serfLANAddr())
		}
		return args
	default:
		return []string{"agent", "-dev"}
	}
}

func (a *Agent) serfLANAddr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(a.ports.serfLAN))
}

// spawn starts the agent process on a.ports, without waiting for it.
func (a *Agent) spawn() error {
	a.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(a.ports.http))
	logFile, err := os.OpenFile(filepath.Join(a.logDir, "consul.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logFile.Close()
	args := append(a.modeArgs(),
		"-bind", "127.0.0.1", "-client", "127.0.0.1",
		"-node", a.node, "-datacenter", a.Datacenter,
		"-http-port", strconv.Itoa(a.ports.http),
		"-serf-lan-port", strconv.Itoa(a.ports.serfLAN),
		"-serf-wan-port", strconv.Itoa(a.ports.serfWAN),
		"-server-port", strconv.Itoa(a.ports.server),
		"-dns-port", "-1", "-grpc-port", "-1", "-grpc-tls-port", "-1",
		"-log-level", "warn",
		"-hcl", `disable_update_check = true`,
		"-hcl", `limits { http_max_conns_per_client = 10000 }`,
	)
	for _, hcl := range a.hcl {
		args = append(args, "-hcl", hcl)
	}
	a.cmd = exec.Command(a.binary, args...)
	a.cmd.Stdout, a.cmd.Stderr = logFile, logFile
	// Die with the test process, even when a panic skips TestMain's Stop.
	a.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := a.cmd.Start(); err != nil {
		return err
	}
	a.exited = make(chan error, 1)
	go func() { a.exited <- a.cmd.Wait() }()

	cfg := api.DefaultConfig()
	cfg.Address, cfg.Token = a.Addr, a.token
	if a.Client, err = api.NewClient(cfg); err != nil {
		a.kill()
		return err
	}
	return nil
}

// awaitLeader waits until the agent has elected itself and registered its
// own node, so that services registered from now on are healthy at once.
func (a *Agent) awaitLeader(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case err := <-a.exited:
			return fmt.Errorf("agent exited: %v", err)
		default:
		}
		leader, err := a.Client.Status().Leader()
		if err == nil && leader != "" {
			checks, _, err := a.Client.Health().Node(a.node, nil)
			if err == nil && len(checks) > 0 && checks.AggregatedStatus() == api.HealthPassing {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return errors.New("no leader in time")
}

// Stop kills the agent and waits for it to exit.
func (a *Agent) Stop() {
	a.kill()
	os.RemoveAll(a.logDir)
}

// Kill kills the agent hard, as a crash would, keeping its ports for
// Restart. A dev agent's state, in memory, is lost.
func (a *Agent) Kill() { a.kill() }

// Leave stops the agent with SIGTERM, as a supervisor does: a client
// agent leaves the cluster gracefully (leave_on_terminate is the default
// on clients), taking its node and services out of the catalog.
func (a *Agent) Leave() { a.signal(syscall.SIGTERM) }

func (a *Agent) kill() { a.signal(syscall.SIGKILL) }

// signal sends sig to the running agent and waits for it to exit.
func (a *Agent) signal(sig syscall.Signal) {
	if a.cmd == nil || a.cmd.Process == nil {
		return
	}
	_ = a.cmd.Process.Signal(sig)
	<-a.exited
	a.cmd = nil
}

// Restart starts a stopped agent again on the same ports: a dev agent
// empty, a client agent or a cluster server with its data dir.
func (a *Agent) Restart() error {
	a.kill()
	return a.launch()
}

// RestartWithFreshDataDir starts a stopped agent again on the same ports
// and under the same node name, with its data dir emptied first, as a
// host rebuilt after a crash does: the agent comes back with a new node ID.
func (a *Agent) RestartWithFreshDataDir() error {
	a.kill()
	if err := os.RemoveAll(a.dataDir); err != nil {
		return err
	}
	return a.launch()
}

// Running reports whether the agent's process runs.
func (a *Agent) Running() bool { return a.cmd != nil }

// Node is the agent's node name.
func (a *Agent) Node() string { return a.node }

// JoinWAN federates a with other, another datacenter's agent.
func (a *Agent) JoinWAN(other *Agent) error {
	return a.Client.Agent().Join(net.JoinHostPort("127.0.0.1", strconv.Itoa(other.ports.serfWAN)), true)
}

// Log returns the end of what the agent wrote to its log, across its
// restarts.
func (a *Agent) Log() string { return a.logTail() }

func (a *Agent) logTail() string {
	data, _ := os.ReadFile(filepath.Join(a.logDir, "consul.log"))
	if len(data) > 4096 {
		data = data[len(data)-4096:]
	}
	return string(data)
}

// Instance is a service instance to register with a TTL check, so that a
// test sets its health.
type Instance struct {
	// Service is the service's name.
	Service string
	// ID is the instance's service ID.
	ID string
	// Address is the instance's address. Default: 127.0.0.1.
	Address string
	// Port is the instance's port.
	Port int
	// Tags are the instance's tags.
	Tags []string
	// Meta is the instance's metadata.
	Meta map[string]string
	// Weights are the instance's weights. Default: Consul's (1, 1).
	Weights *api.AgentWeights
	// Status of its check at registration: passing (default), warning or
	// critical.
	Status string
}

// checkID is the ID of the TTL check of instance id.
func checkID(id string) string { return "ttl-" + id }

// Register registers inst with the agent.
func (a *Agent) Register(t testing.TB, inst Instance) {
	t.Helper()
	if inst.Address == "" {
		inst.Address = "127.0.0.1"
	}
	if inst.Status == "" {
		inst.Status = api.HealthPassing
	}
	err := a.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: inst.ID, Name: inst.Service, Address: inst.Address, Port: inst.Port,
		Tags: inst.Tags, Meta: inst.Meta, Weights: inst.Weights,
		Check: &api.AgentServiceCheck{CheckID: checkID(inst.ID), TTL: "1h", Status: inst.Status},
	})
	if err != nil {
		t.Fatalf("registering %s: %v", inst.ID, err)
	}
}

// SetStatus sets the check of instance id to passing, warning or critical.
func (a *Agent) SetStatus(t testing.TB, id, status string) {
	t.Helper()
	if err := a.Client.Agent().UpdateTTL(checkID(id), "set by test", status); err != nil {
		t.Fatalf("setting %s %s: %v", id, status, err)
	}
}

// Deregister removes instance id.
func (a *Agent) Deregister(t testing.TB, id string) {
	t.Helper()
	if err := a.Client.Agent().ServiceDeregister(id); err != nil {
		t.Fatalf("deregistering %s: %v", id, err)
	}
}

// PassingIDs returns the IDs of service's instances that Consul lists as
// passing, sorted and joined by commas; on an error, its text.
func (a *Agent) PassingIDs(service string) string {
	entries, _, err := a.Client.Health().Service(service, "", true, nil)
	if err != nil {
		return err.Error()
	}
	var ids []string
	for _, e := range entries {
		ids = append(ids, e.Service.ID)
	}
	slices.Sort(ids)
	return strings.Join(ids, ",")
}

// Maintenance puts instance id into maintenance mode, or takes it out.
func (a *Agent) Maintenance(t testing.TB, id string, on bool) {
	t.Helper()
	var err error
	if on {
		err = a.Client.Agent().EnableServiceMaintenance(id, "test")
	} else {
		err = a.Client.Agent().DisableServiceMaintenance(id)
	}
	if err != nil {
		t.Fatalf("maintenance of %s: %v", id, err)
	}
}

// freePorts finds ports free on loopback for TCP and, for Serf, UDP too.
func freePorts() (ports, error) {
	var p [4]int
	for i := range p {
		for p[i] == 0 {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return ports{}, err
			}
			port := l.Addr().(*net.TCPAddr).Port
			u, err := net.ListenPacket("udp", l.Addr().String())
			l.Close()
			if err == nil && !slices.Contains(p[:i], port) {
				u.Close()
				p[i] = port
			}
		}
	}
	return ports{http: p[0], serfLAN: p[1], serfWAN: p[2], server: p[3]}, nil
}

// Main is a test package's TestMain body: it starts an agent into *agent,
// runs the tests, stops the agent, and exits with the tests' status.
func Main(m *testing.M, agent **Agent) {
	var err error
	if *agent, err = Start(Options{}); err != nil {
		fmt.Fprintln(os.Stderr, "starting consul:", err)
		os.Exit(1)
	}
	code := m.Run()
	(*agent).Stop()
	os.Exit(code)
}
