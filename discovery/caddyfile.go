package discovery

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddymesh/caddymesh/internal/args"
	"github.com/caddymesh/caddymesh/internal/urlpath"
)

// UnmarshalCaddyfile sets up the source from Caddyfile tokens. Syntax:
//
//	dynamic consul <service> {
//	    tag             <tag> ...
//	    filter          <expression>
//	    datacenter      <dc> ...
//	    health          passing|warning
//	    near            _agent|<node>
//	    connect
//	    consistency     default|stale|cached
//	    wait            <duration>
//	    hold_last       <duration>
//	    panic_threshold <0..100>
//	    max_services    <n>
//	    idle_timeout    <duration>
//	    resolve_timeout <duration>
//	    chain
//	    consul {
//	        ...
//	    }
//	}
//
// tag is repeatable; every tag listed must be present. max_services,
// idle_timeout and resolve_timeout are for a service named by
// placeholders. chain follows the service's discovery chain.
func (cu *ConsulUpstreams) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the source's name
	if !d.AllArgs(&cu.Service) {
		return d.ArgErr()
	}
	block := args.NewBlock("tag", "datacenter")
	for d.NextBlock(0) {
		if err := block.Check(d); err != nil {
			return err
		}
		var err error
		switch d.Val() {
		case "tag":
			err = args.Append(d, &cu.Tags)
		case "filter":
			err = args.String(d, &cu.Filter)
		case "datacenter":
			err = args.Append(d, &cu.Datacenters)
		case "health":
			err = args.String(d, &cu.Health)
		case "near":
			err = args.String(d, &cu.Near)
		case "connect":
			err = args.Flag(d, &cu.Connect)
		case "consistency":
			err = args.String(d, &cu.Consistency)
		case "wait":
			err = args.Duration(d, &cu.Wait)
		case "hold_last":
			cu.HoldLast = new(caddy.Duration)
			err = args.Duration(d, cu.HoldLast)
		case "panic_threshold":
			err = args.Int(d, &cu.PanicThreshold)
		case "max_services":
			err = args.Int(d, &cu.MaxServices)
		case "idle_timeout":
			err = args.Duration(d, &cu.IdleTimeout)
		case "resolve_timeout":
			err = args.Duration(d, &cu.ResolveTimeout)
		case "consul":
			cu.Consul = new(ConsulConfig)
			err = cu.Consul.UnmarshalCaddyfile(d)
		case "chain":
			err = args.Flag(d, &cu.Chain)
		default:
			return d.Errf("unrecognized consul upstreams option '%s'", d.Val())
		}
		if err != nil {
			return err
		}
	}
	if err := cu.Validate(); err != nil {
		return d.Err(err.Error())
	}
	return nil
}

// UnmarshalCaddyfile sets up the app from the tokens of the `mesh` global
// option. Syntax:
//
//	mesh {
//	    consul {
//	        ...
//	    }
//	    register <service> {
//	        ...
//	    }
//	    path_with_escaped_slashes_action <action>
//	}
//
// register is repeatable.
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the option's name
	if d.NextArg() {
		return d.ArgErr()
	}
	block := args.NewBlock("register")
	for d.NextBlock(0) {
		if err := block.Check(d); err != nil {
			return err
		}
		switch d.Val() {
		case "consul":
			a.Consul = new(ConsulConfig)
			if err := a.Consul.UnmarshalCaddyfile(d); err != nil {
				return err
			}
		case "register":
			r := new(Registration)
			if err := r.UnmarshalCaddyfile(d); err != nil {
				return err
			}
			a.Register = append(a.Register, r)
		case "path_with_escaped_slashes_action":
			if err := args.String(d, &a.PathWithEscapedSlashesAction); err != nil {
				return err
			}
			if _, err := urlpath.ParseEscapedSlashes(a.PathWithEscapedSlashesAction); err != nil {
				return d.Errf("path_with_escaped_slashes_action %v", err)
			}
		default:
			return d.Errf("unrecognized mesh option '%s'", d.Val())
		}
	}
	return nil
}

// UnmarshalCaddyfile reads a register block of the mesh option. Syntax:
//
//	register <service> {
//	    id        <instance-id>
//	    address   <host>
//	    port      <port>
//	    tags      <tag> ...
//	    meta      <key> <value>
//	    weights   <passing> [<warning>]
//	    check     http <url> | tcp <host:port> | ttl
//	    interval  <duration>
//	    timeout   <duration>
//	    deregister_critical_after <duration>
//	    drain     <duration>
//	    connect   native
//	}
//
// meta is repeatable.
func (r *Registration) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if !d.AllArgs(&r.Name) {
		return d.ArgErr()
	}
	block := args.NewBlock("tags", "meta")
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if err := block.Check(d); err != nil {
			return err
		}
		var err error
		switch d.Val() {
		case "id":
			err = args.String(d, &r.ID)
		case "address":
			err = args.String(d, &r.Address)
		case "port":
			err = args.Int(d, &r.Port)
		case "tags":
			err = args.Append(d, &r.Tags)
		case "meta":
			err = r.parseMeta(d)
		case "weights":
			err = r.parseWeights(d)
		case "check":
			err = r.healthCheck().parseKind(d)
		case "interval":
			err = args.Duration(d, &r.healthCheck().Interval)
		case "timeout":
			err = args.Duration(d, &r.healthCheck().Timeout)
		case "deregister_critical_after":
			err = args.Duration(d, &r.healthCheck().DeregisterCriticalAfter)
		case "drain":
			err = args.Duration(d, &r.Drain)
		case "connect":
			err = r.parseConnect(d)
		default:
			return d.Errf("unrecognized mesh register option '%s'", d.Val())
		}
		if err != nil {
			return err
		}
	}
	if err := r.validate(); err != nil {
		return d.Err(err.Error())
	}
	return nil
}

// parseConnect reads `connect native`.
func (r *Registration) parseConnect(d *caddyfile.Dispenser) error {
	var mode string
	if err := args.String(d, &mode); err != nil {
		return err
	}
	if mode != "native" {
		return d.Errf("connect %q: want native (a sidecar proxy registers itself)", mode)
	}
	r.Connect = &RegistrationConnect{Native: true}
	return nil
}

// healthCheck returns r's health check, creating it.
func (r *Registration) healthCheck() *RegistrationCheck {
	if r.Check == nil {
		r.Check = new(RegistrationCheck)
	}
	return r.Check
}

func (r *Registration) parseMeta(d *caddyfile.Dispenser) error {
	var key, value string
	if !d.AllArgs(&key, &value) {
		return d.ArgErr()
	}
	if r.Meta == nil {
		r.Meta = make(map[string]string)
	}
	r.Meta[key] = value
	return nil
}

func (r *Registration) parseWeights(d *caddyfile.Dispenser) error {
	values := d.RemainingArgs()
	if len(values) < 1 || len(values) > 2 {
		return d.ArgErr()
	}
	weights := make([]int, len(values))
	for i, arg := range values {
		n, err := strconv.Atoi(arg)
		if err != nil {
			return d.Errf("weights '%s': not a whole number", arg)
		}
		weights[i] = n
	}
	r.Weights = &RegistrationWeights{Passing: weights[0]}
	if len(weights) == 2 {
		r.Weights.Warning = &weights[1]
	}
	return nil
}

// parseKind reads `check http <url>`, `check tcp <host:port>` or
// `check ttl`.
func (c *RegistrationCheck) parseKind(d *caddyfile.Dispenser) error {
	kind := d.RemainingArgs()
	switch {
	case len(kind) == 2 && kind[0] == "http":
		c.HTTP = kind[1]
	case len(kind) == 2 && kind[0] == "tcp":
		c.TCP = kind[1]
	case len(kind) == 1 && kind[0] == "ttl":
		c.TTL = true
	default:
		return d.Errf("check %q: want http <url>, tcp <host:port> or ttl", kind)
	}
	return nil
}

// UnmarshalCaddyfile sets up the source from the intentions option of
// mesh_identity. Syntax:
//
//	intentions [<destination>] {
//	    default allow|deny
//	    consul { ... }
//	}
func (ci *ConsulIntentions) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the option's name
	if err := args.Optional(d, &ci.Destination); err != nil {
		return err
	}
	block := args.NewBlock()
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if err := block.Check(d); err != nil {
			return err
		}
		switch d.Val() {
		case "default":
			if err := args.String(d, &ci.Default); err != nil {
				return err
			}
		case "consul":
			ci.Consul = new(ConsulConfig)
			if err := ci.Consul.UnmarshalCaddyfile(d); err != nil {
				return err
			}
		default:
			return d.Errf("unrecognized intentions option '%s'", d.Val())
		}
	}
	if err := ci.Validate(); err != nil {
		return d.Err(err.Error())
	}
	return nil
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens: mesh_chain
// takes no argument and no block.
func (ChainResponseHeaders) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive's name
	if d.NextArg() || d.NextBlock(0) {
		return d.Err("mesh_chain takes no arguments and no block")
	}
	return nil
}

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*ConsulIntentions)(nil)
	_ caddyfile.Unmarshaler = (*ConsulUpstreams)(nil)
	_ caddyfile.Unmarshaler = (*App)(nil)
	_ caddyfile.Unmarshaler = (*Registration)(nil)
	_ caddyfile.Unmarshaler = (*ChainResponseHeaders)(nil)
)
