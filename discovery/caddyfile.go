package discovery

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// UnmarshalCaddyfile sets up the source from Caddyfile tokens. Syntax:
//
//	dynamic consul <service> {
//	    tag             <tag> ...
//	    filter          <expression>
//	    datacenter      <dc> ...
//	    health          passing|warning
//	    near            _agent|<node>
//	    consistency     default|stale|cached
//	    wait            <duration>
//	    panic_threshold <0..100>
//	    consul {
//	        ...
//	    }
//	}
//
// tag is repeatable; every tag listed must be present.
func (cu *ConsulUpstreams) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the source's name
	if !d.AllArgs(&cu.Service) {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		var err error
		switch d.Val() {
		case "tag":
			err = appendArgs(d, &cu.Tags)
		case "filter":
			err = oneArg(d, &cu.Filter)
		case "datacenter":
			err = appendArgs(d, &cu.Datacenters)
		case "health":
			err = oneArg(d, &cu.Health)
		case "near":
			err = oneArg(d, &cu.Near)
		case "consistency":
			err = oneArg(d, &cu.Consistency)
		case "wait":
			err = durationArg(d, &cu.Wait)
		case "panic_threshold":
			err = percentArg(d, &cu.PanicThreshold)
		case "consul":
			cu.Consul = new(ConsulConfig)
			err = cu.Consul.UnmarshalCaddyfile(d)
		default:
			return d.Errf("unrecognized consul upstreams option '%s'", d.Val())
		}
		if err != nil {
			return err
		}
	}
	if err := cu.validate(); err != nil {
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
//	}
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the option's name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "consul":
			a.Consul = new(ConsulConfig)
			if err := a.Consul.UnmarshalCaddyfile(d); err != nil {
				return err
			}
		default:
			return d.Errf("unrecognized mesh option '%s'", d.Val())
		}
	}
	return nil
}

// UnmarshalCaddyfile reads a consul block, the same in the mesh option
// and in a source. Syntax:
//
//	consul {
//	    address    <host:port|url>
//	    token      <token>
//	    token_file <path>
//	    datacenter <dc>
//	    namespace  <namespace>
//	    partition  <partition>
//	    tls {
//	        ca_file     <path>
//	        cert_file   <path>
//	        key_file    <path>
//	        server_name <name>
//	        insecure_skip_verify
//	    }
//	}
func (c *ConsulConfig) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch d.Val() {
		case "address":
			err = oneArg(d, &c.Address)
		case "token":
			err = oneArg(d, &c.Token)
		case "token_file":
			err = oneArg(d, &c.TokenFile)
		case "datacenter":
			err = oneArg(d, &c.Datacenter)
		case "namespace":
			err = oneArg(d, &c.Namespace)
		case "partition":
			err = oneArg(d, &c.Partition)
		case "tls":
			c.TLS = new(ConsulTLS)
			err = c.TLS.unmarshalCaddyfile(d)
		default:
			return d.Errf("unrecognized consul option '%s'", d.Val())
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// unmarshalCaddyfile reads the tls block of a consul block.
func (t *ConsulTLS) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch d.Val() {
		case "ca_file":
			err = oneArg(d, &t.CAFile)
		case "cert_file":
			err = oneArg(d, &t.CertFile)
		case "key_file":
			err = oneArg(d, &t.KeyFile)
		case "server_name":
			err = oneArg(d, &t.ServerName)
		case "insecure_skip_verify":
			if d.NextArg() {
				return d.ArgErr()
			}
			t.InsecureSkipVerify = true
		default:
			return d.Errf("unrecognized consul tls option '%s'", d.Val())
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// oneArg reads the option's single argument into dst.
func oneArg(d *caddyfile.Dispenser, dst *string) error {
	if !d.AllArgs(dst) {
		return d.ArgErr()
	}
	return nil
}

// appendArgs appends the option's arguments, at least one, to dst.
func appendArgs(d *caddyfile.Dispenser, dst *[]string) error {
	args := d.RemainingArgs()
	if len(args) == 0 {
		return d.ArgErr()
	}
	*dst = append(*dst, args...)
	return nil
}

// durationArg reads the option's single argument as a duration.
func durationArg(d *caddyfile.Dispenser, dst *caddy.Duration) error {
	option, arg := d.Val(), ""
	if err := oneArg(d, &arg); err != nil {
		return err
	}
	dur, err := caddy.ParseDuration(arg)
	if err != nil {
		return d.Errf("%s '%s': %v", option, arg, err)
	}
	*dst = caddy.Duration(dur)
	return nil
}

// percentArg reads the option's single argument as a whole percentage.
func percentArg(d *caddyfile.Dispenser, dst *int) error {
	option, arg := d.Val(), ""
	if err := oneArg(d, &arg); err != nil {
		return err
	}
	n, err := strconv.Atoi(arg)
	if err != nil {
		return d.Errf("%s '%s': must be a whole number from 0 to 100", option, arg)
	}
	*dst = n
	return nil
}

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*ConsulUpstreams)(nil)
	_ caddyfile.Unmarshaler = (*App)(nil)
	_ caddyfile.Unmarshaler = (*ConsulConfig)(nil)
)
