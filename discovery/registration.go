package discovery

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/hashicorp/consul/api"

	"github.com/caddymesh/caddymesh/internal/bounds"
	"github.com/caddymesh/caddymesh/internal/consul"
	"github.com/caddymesh/caddymesh/internal/svcname"
)

// Defaults of a registration.
const (
	defaultCheckInterval           = 10 * time.Second
	defaultCheckTimeout            = 2 * time.Second
	defaultDeregisterCriticalAfter = time.Minute
	defaultDrain                   = 5 * time.Second
)

// Bounds of a registration's options. Consul runs no check more often than
// once a second, and reaps critical instances no sooner than after a
// minute; weights travel in DNS SRV records, whose weight field has 16
// bits.
const (
	maxRegisteredWeight        = 65535
	minCheckInterval           = time.Second
	maxCheckInterval           = 24 * time.Hour
	minCheckTimeout            = time.Millisecond
	maxCheckTimeout            = 5 * time.Minute
	minDeregisterCriticalAfter = time.Minute
	maxDeregisterCriticalAfter = 7 * 24 * time.Hour
	minDrain                   = time.Millisecond
	maxDrain                   = 10 * time.Minute
)

// Registration is a service this Caddy fronts, which the mesh app registers
// in Consul while Caddy runs, and takes out of Consul before Caddy stops.
type Registration struct {
	// Name of the service in Consul. Required.
	Name string `json:"name,omitempty"`

	// ID of this instance of the service; it follows the service-name rule.
	// Default: <name>-<hostname>-<port>.
	ID string `json:"id,omitempty"`

	// Address callers reach the service at. Default: the address of the
	// Consul agent's node.
	Address string `json:"address,omitempty"`

	// Port callers reach the service at, from 1 to 65535: usually the port
	// of the Caddy site that fronts it. Required.
	Port int `json:"port,omitempty"`

	// Tags of the instance.
	Tags []string `json:"tags,omitempty"`

	// Metadata of the instance.
	Meta map[string]string `json:"meta,omitempty"`

	// Weights of the instance: its share of traffic when its checks pass,
	// and when one warns. Default: Consul's (1 and 1).
	Weights *RegistrationWeights `json:"weights,omitempty"`

	// Health check Consul runs or expects. Default: a TCP check on the
	// address and port.
	Check *RegistrationCheck `json:"check,omitempty"`

	// How the instance takes part in Consul's service mesh. Default: not
	// at all.
	Connect *RegistrationConnect `json:"connect,omitempty"`

	// How long to wait, after taking the instance out of Consul when Caddy
	// stops or a config drops the registration, before Caddy stops
	// serving: callers' watchers see it go within milliseconds, and
	// requests in flight finish. From 1ms to 10m. Default: 5s.
	Drain caddy.Duration `json:"drain,omitempty"`
}

// RegistrationWeights are the weights of a registered instance.
type RegistrationWeights struct {
	// Weight while every check passes, from 1 to 65535.
	Passing int `json:"passing,omitempty"`
	// Weight while a check warns, from 0 to 65535; 0 takes the instance
	// out of rotation while it warns. Default: 1.
	Warning *int `json:"warning,omitempty"`
}

// warning is the weight while a check warns.
func (w *RegistrationWeights) warning() int {
	if w.Warning == nil {
		return 1
	}
	return *w.Warning
}

// RegistrationConnect is how a registered instance takes part in Consul's
// service mesh.
type RegistrationConnect struct {
	// The instance speaks Connect itself (its site presents
	// `get_certificate connect` and verifies `trust_pool connect`): Consul
	// lists it in /v1/health/connect/<name>, for Connect clients (Envoy,
	// consul connect proxy, caddymesh's `dynamic consul <name> { connect }`)
	// to call directly.
	Native bool `json:"native,omitempty"`
}

// RegistrationCheck is the health check of a registered instance: one of
// HTTP, TCP and TTL. Default: TCP on the registration's address and port.
type RegistrationCheck struct {
	// URL Consul's agent GETs; any 2xx answer passes, 429 warns.
	HTTP string `json:"http,omitempty"`

	// host:port Consul's agent connects to.
	TCP string `json:"tcp,omitempty"`

	// Caddy itself reports the instance healthy every half interval while
	// it runs; Consul marks it critical when the reports stop.
	TTL bool `json:"ttl,omitempty"`

	// How often the check runs (for TTL, how long a report holds), from 1s
	// to 24h. Default: 10s.
	Interval caddy.Duration `json:"interval,omitempty"`

	// How long an HTTP or TCP check may take, from 1ms to 5m. Default: 2s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// Consul removes the instance when the check has been critical this
	// long, for when Caddy dies without taking it out itself. From 1m to
	// 168h. Default: 1m.
	DeregisterCriticalAfter caddy.Duration `json:"deregister_critical_after,omitempty"`
}

// validate rejects bad values, naming the field and the value.
func (r *Registration) validate() error {
	if r.Name == "" {
		return fmt.Errorf("mesh register: name is required")
	}
	if !svcname.Valid(r.Name) {
		return fmt.Errorf("mesh register %q: name: %s", r.Name, svcname.Rule)
	}
	if r.ID != "" && !svcname.Valid(r.ID) { // a path segment of the deregister call
		return fmt.Errorf("mesh register %s: id %q: %s", r.Name, r.ID, svcname.Rule)
	}
	if err := r.checkSettings(); err != nil {
		return fmt.Errorf("mesh register %s: %w", r.Name, err)
	}
	return nil
}

// checkSettings checks the port, drain, weights, address and check.
func (r *Registration) checkSettings() error {
	if err := cmp.Or(
		bounds.Check("port", r.Port, 1, 65535),
		bounds.DurationOrZero("drain", r.Drain, minDrain, maxDrain),
	); err != nil {
		return err
	}
	if w := r.Weights; w != nil {
		if err := cmp.Or(
			bounds.Check("weights passing", w.Passing, 1, maxRegisteredWeight),
			bounds.Check("weights warning", w.warning(), 0, maxRegisteredWeight),
		); err != nil {
			return err
		}
	}
	if r.Address != "" {
		if err := consul.CheckHostOnly(r.Address); err != nil {
			return fmt.Errorf("address %q: %v", r.Address, err)
		}
	}
	if r.Check != nil {
		return r.Check.validate()
	}
	return nil
}

// validate rejects bad check settings.
func (c *RegistrationCheck) validate() error {
	kinds := 0
	for _, set := range []bool{c.HTTP != "", c.TCP != "", c.TTL} {
		if set {
			kinds++
		}
	}
	if kinds > 1 {
		return errors.New("check: only one of http, tcp and ttl may be set")
	}
	if c.HTTP != "" {
		if err := consul.CheckURL(c.HTTP, "http", "https"); err != nil {
			return fmt.Errorf("check http %q: %v", c.HTTP, err)
		}
	}
	if c.TCP != "" {
		if err := consul.CheckHostPort(c.TCP); err != nil {
			return fmt.Errorf("check tcp %q: %v", c.TCP, err)
		}
	}
	return cmp.Or(
		bounds.DurationOrZero("interval", c.Interval, minCheckInterval, maxCheckInterval),
		bounds.DurationOrZero("timeout", c.Timeout, minCheckTimeout, maxCheckTimeout),
		bounds.DurationOrZero("deregister_critical_after", c.DeregisterCriticalAfter, minDeregisterCriticalAfter, maxDeregisterCriticalAfter),
	)
}

// prepare fills the defaults of r, which Validate found valid.
func (r *Registration) prepare() error {
	if r.ID == "" {
		host, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("mesh register %s: id: no hostname to default to: %v", r.Name, err)
		}
		r.ID = fmt.Sprintf("%s-%s-%d", r.Name, host, r.Port)
	}
	r.Drain = cmp.Or(r.Drain, caddy.Duration(defaultDrain))
	if r.Check == nil {
		r.Check = new(RegistrationCheck)
	}
	c := r.Check
	if c.HTTP == "" && c.TCP == "" && !c.TTL {
		c.TCP = net.JoinHostPort(cmp.Or(r.Address, "127.0.0.1"), strconv.Itoa(r.Port))
	}
	c.Interval = cmp.Or(c.Interval, caddy.Duration(defaultCheckInterval))
	c.Timeout = cmp.Or(c.Timeout, caddy.Duration(defaultCheckTimeout))
	c.DeregisterCriticalAfter = cmp.Or(c.DeregisterCriticalAfter, caddy.Duration(defaultDeregisterCriticalAfter))
	return nil
}

// agentRegistration is what the agent's register endpoint takes for r.
func (r *Registration) agentRegistration() *api.AgentServiceRegistration {
	check := &api.AgentServiceCheck{
		CheckID:                        "service:" + r.ID,
		Name:                           r.Name + " health",
		DeregisterCriticalServiceAfter: time.Duration(r.Check.DeregisterCriticalAfter).String(),
		Status:                         api.HealthPassing, // Caddy is serving it now
	}
	switch {
	case r.Check.HTTP != "":
		check.HTTP = r.Check.HTTP
	case r.Check.TCP != "":
		check.TCP = r.Check.TCP
	}
	if r.Check.TTL {
		check.TTL = time.Duration(r.Check.Interval).String()
	} else {
		check.Interval = time.Duration(r.Check.Interval).String()
		check.Timeout = time.Duration(r.Check.Timeout).String()
	}
	reg := &api.AgentServiceRegistration{
		ID: r.ID, Name: r.Name, Address: r.Address, Port: r.Port,
		Tags: r.Tags, Meta: r.Meta, Check: check,
	}
	if r.Weights != nil {
		reg.Weights = &api.AgentWeights{Passing: r.Weights.Passing, Warning: r.Weights.warning()}
	}
	if r.Connect != nil && r.Connect.Native {
		reg.Connect = &api.AgentServiceConnect{Native: true}
	}
	return reg
}
