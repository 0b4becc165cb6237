package storage

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddymesh/caddymesh/internal/args"
	"github.com/caddymesh/caddymesh/internal/consul"
)

// UnmarshalCaddyfile sets up the storage from the tokens of the storage
// global option. Syntax:
//
//	storage consul_kv {
//	    prefix       <prefix>
//	    aes_key_file <file>
//	    consul {
//	        ...
//	    }
//	}
func (s *ConsulKV) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the module's name
	if d.NextArg() {
		return d.ArgErr()
	}
	block := args.NewBlock()
	for d.NextBlock(0) {
		if err := block.Check(d); err != nil {
			return err
		}
		var err error
		switch d.Val() {
		case "prefix":
			err = args.String(d, &s.Prefix)
		case "aes_key_file":
			err = args.String(d, &s.AESKeyFile)
		case "consul":
			s.Consul = new(consul.Config)
			err = s.Consul.UnmarshalCaddyfile(d)
		default:
			return d.Errf("unrecognized consul_kv option '%s'", d.Val())
		}
		if err != nil {
			return err
		}
	}
	if err := s.Validate(); err != nil {
		return d.Err(err.Error())
	}
	return nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*ConsulKV)(nil)
