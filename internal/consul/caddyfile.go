package consul

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddymesh/caddymesh/internal/args"
	"github.com/caddymesh/caddymesh/internal/reqkey"
)

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
func (c *Config) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	block := args.NewBlock()
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if err := block.Check(d); err != nil {
			return err
		}
		var err error
		switch d.Val() {
		case "address":
			err = args.String(d, &c.Address)
		case "token":
			err = args.String(d, &c.Token)
		case "token_file":
			err = args.String(d, &c.TokenFile)
		case "datacenter":
			err = args.String(d, &c.Datacenter)
		case "namespace":
			err = args.String(d, &c.Namespace)
		case "partition":
			err = args.String(d, &c.Partition)
		case "tls":
			c.TLS = new(TLS)
			err = c.TLS.unmarshalCaddyfile(d)
		default:
			return d.Errf("unrecognized consul option '%s'", d.Val())
		}
		if err != nil {
			return err
		}
	}
	if c.Address != "" && !reqkey.HasPlaceholders(c.Address) {
		if err := checkConsulAddress(c.Address); err != nil {
			return d.Errf("consul: address %q: %v", c.Address, err)
		}
	}
	return nil
}

// unmarshalCaddyfile reads the tls block of a consul block.
func (t *TLS) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	block := args.NewBlock()
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if err := block.Check(d); err != nil {
			return err
		}
		var err error
		switch d.Val() {
		case "ca_file":
			err = args.String(d, &t.CAFile)
		case "cert_file":
			err = args.String(d, &t.CertFile)
		case "key_file":
			err = args.String(d, &t.KeyFile)
		case "server_name":
			err = args.String(d, &t.ServerName)
		case "insecure_skip_verify":
			err = args.Flag(d, &t.InsecureSkipVerify)
		default:
			return d.Errf("unrecognized consul tls option '%s'", d.Val())
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Interface guards
var _ caddyfile.Unmarshaler = (*Config)(nil)
