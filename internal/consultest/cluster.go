package consultest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"
)

// ClusterOptions shape a cluster.
type ClusterOptions struct {
	// Servers is the number of servers. Default: 3.
	Servers int
	// Datacenter of the cluster. Default: dc1.
	Datacenter string
	// HCL is extra configuration of every server, such as
	// `raft_snapshot_threshold = 64`.
	HCL []string
}

// Cluster is a datacenter of Consul servers on free loopback ports, each
// with its state in a data dir, as operators run one: a leader elected
// among them (raft_multiplier 1, as on a LAN), a catalog that survives
// their restarts, and quorum lost when a majority is down. Client agents
// join it with Options{ClientOf: cluster.Servers[0]}.
type Cluster struct {
	// Servers are the cluster's servers.
	Servers []*Agent
}

// StartCluster starts a cluster's servers at once and waits until each
// knows the leader they elected.
func StartCluster(opts ClusterOptions) (*Cluster, error) {
	binary, err := Binary()
	if err != nil {
		return nil, err
	}
	if opts.Servers == 0 {
		opts.Servers = 3
	}
	if opts.Datacenter == "" {
		opts.Datacenter = "dc1"
	}
	c := &Cluster{}
	for i := range opts.Servers {
		logDir, err := os.MkdirTemp("", "consultest-server-")
		if err != nil {
			c.Stop()
			return nil, err
		}
		c.Servers = append(c.Servers, &Agent{Datacenter: opts.Datacenter, hcl: opts.HCL, binary: binary, logDir: logDir,
			node: fmt.Sprintf("server-%d", i+1), dataDir: filepath.Join(logDir, "data"), expect: opts.Servers})
	}
	if err := c.assignPorts(); err != nil {
		c.Stop()
		return nil, err
	}
	for _, s := range c.Servers {
		s.peers = slices.DeleteFunc(slices.Clone(c.Servers), func(other *Agent) bool { return other == s })
	}
	if err := c.Restart(); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

// assignPorts gives every server free ports, none shared with another.
func (c *Cluster) assignPorts() error {
	taken := map[int]bool{}
	for _, s := range c.Servers {
		for {
			p, err := freePorts()
			if err != nil {
				return err
			}
			all := []int{p.http, p.serfLAN, p.serfWAN, p.server}
			if !slices.ContainsFunc(all, func(port int) bool { return taken[port] }) {
				for _, port := range all {
					taken[port] = true
				}
				s.ports = p
				break
			}
		}
	}
	return nil
}

// Kill kills every running server hard, as a power cut would.
func (c *Cluster) Kill() {
	for _, s := range c.Servers {
		s.Kill()
	}
}

// Restart starts every server that is not running, all at once, as
// operators bring a cluster back after an outage, and waits until each
// knows a leader.
func (c *Cluster) Restart() error {
	for _, s := range c.Servers {
		if s.Running() {
			continue
		}
		if err := s.spawn(); err != nil {
			return err
		}
	}
	var errs []error
	for _, s := range c.Servers {
		if err := s.awaitLeader(60 * time.Second); err != nil {
			errs = append(errs, fmt.Errorf("consul server %s on %s: %w\n%s", s.node, s.Addr, err, s.logTail()))
		}
	}
	return errors.Join(errs...)
}

// Pause freezes the agent (SIGSTOP), as a long GC pause, a stalled disk
// or a partition would: it answers nothing and, a server, falls behind
// its leader, until Resume.
func (a *Agent) Pause() {
	if a.cmd != nil {
		_ = a.cmd.Process.Signal(syscall.SIGSTOP)
	}
}

// Resume lets a paused agent run again (SIGCONT), with the state it had.
func (a *Agent) Resume() {
	if a.cmd != nil {
		_ = a.cmd.Process.Signal(syscall.SIGCONT)
	}
}

// Leader returns the server that leads the cluster now, as the running
// servers see it.
func (c *Cluster) Leader() (*Agent, error) {
	for _, s := range c.Servers {
		if !s.Running() {
			continue
		}
		leader, err := s.Client.Status().Leader()
		if err != nil || leader == "" {
			continue
		}
		for _, candidate := range c.Servers {
			if leader == fmt.Sprintf("127.0.0.1:%d", candidate.ports.server) {
				return candidate, nil
			}
		}
	}
	return nil, errors.New("no server knows a leader")
}

// Followers returns the running servers that do not lead.
func (c *Cluster) Followers() ([]*Agent, error) {
	leader, err := c.Leader()
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(slices.Clone(c.Servers), func(s *Agent) bool { return s == leader || !s.Running() }), nil
}

// Stop kills every server and removes its state.
func (c *Cluster) Stop() {
	for _, s := range c.Servers {
		s.Stop()
	}
}
