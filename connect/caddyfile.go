package connect

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddymesh/caddymesh/internal/args"
	"github.com/caddymesh/caddymesh/internal/consul"
)

// UnmarshalCaddyfile reads the module from `get_certificate connect`, in a
// site's tls block:
//
//	get_certificate connect <service> {
//	    consul { ... }
//	}
func (g *CertGetter) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the module's name
	if err := args.String(d, &g.Service); err != nil {
		return err
	}
	if err := unmarshalConsulOnly(d, &g.Consul, "get_certificate connect"); err != nil {
		return err
	}
	if err := g.Validate(); err != nil {
		return d.Err(err.Error())
	}
	return nil
}

// UnmarshalCaddyfile reads the module from `trust_pool connect`:
//
//	trust_pool connect {
//	    consul { ... }
//	}
func (p *CAPool) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the module's name
	if d.NextArg() {
		return d.ArgErr()
	}
	return unmarshalConsulOnly(d, &p.Consul, "trust_pool connect")
}

// unmarshalConsulOnly reads a block whose one option is consul.
func unmarshalConsulOnly(d *caddyfile.Dispenser, dst **consul.Config, module string) error {
	block := args.NewBlock()
	for d.NextBlock(0) {
		if err := block.Check(d); err != nil {
			return err
		}
		if d.Val() != "consul" {
			return d.Errf("unrecognized %s option '%s'", module, d.Val())
		}
		*dst = new(consul.Config)
		if err := (*dst).UnmarshalCaddyfile(d); err != nil {
			return err
		}
	}
	return nil
}

// UnmarshalCaddyfile reads the module from `transport connect`, in a
// reverse_proxy block:
//
//	transport connect <service> {
//	    destination <service>
//	    datacenter  <dc>
//	    namespace   <namespace>
//	    partition   <partition>
//	    consul { ... }
//	    <options of transport http but tls_*, network_proxy, forward_proxy_url>
//	}
func (t *Transport) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the module's name
	name := d.Token()
	if err := args.String(d, &t.Service); err != nil {
		return err
	}
	var httpOptions []caddyfile.Token
	block := args.NewBlock()
	for d.NextBlock(0) {
		var err error
		switch d.Val() {
		case "destination", "datacenter", "namespace", "partition", "consul":
			err = t.unmarshalOption(d, block)
		default:
			httpOptions = append(httpOptions, d.NextSegment()...)
		}
		if err != nil {
			return err
		}
	}
	if err := t.unmarshalHTTPOptions(name, httpOptions); err != nil {
		return err
	}
	if err := t.Validate(); err != nil {
		return d.Err(err.Error())
	}
	return nil
}

// unmarshalOption reads one of the transport's own options.
func (t *Transport) unmarshalOption(d *caddyfile.Dispenser, block *args.Block) error {
	if err := block.Check(d); err != nil {
		return err
	}
	switch d.Val() {
	case "destination":
		return args.String(d, &t.Destination)
	case "datacenter":
		return args.String(d, &t.Datacenter)
	case "namespace":
		return args.String(d, &t.Namespace)
	case "partition":
		return args.String(d, &t.Partition)
	}
	t.Consul = new(consul.Config)
	return t.Consul.UnmarshalCaddyfile(d)
}

// unmarshalHTTPOptions reads the options of `transport http` with Caddy's
// own parser, as the block `<name> { <options> }`.
func (t *Transport) unmarshalHTTPOptions(name caddyfile.Token, options []caddyfile.Token) error {
	if len(options) == 0 {
		return nil
	}
	last := options[len(options)-1]
	tokens := append([]caddyfile.Token{name, {File: name.File, Line: name.Line, Text: "{"}}, options...)
	tokens = append(tokens, caddyfile.Token{File: last.File, Line: last.Line + 1, Text: "}"})
	return t.HTTPTransport.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens))
}

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*CertGetter)(nil)
	_ caddyfile.Unmarshaler = (*CAPool)(nil)
	_ caddyfile.Unmarshaler = (*Transport)(nil)
)
