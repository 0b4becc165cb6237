package gateway

import (
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddymesh/caddymesh/internal/args"
	"github.com/caddymesh/caddymesh/internal/consul"
)

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	mesh_service <placeholder> {
//	    namespace      <prefix>
//	    allow_services <pattern> ...
//	    require_tag    <tag>
//	    strip_path
//	    consul {
//	        ...
//	    }
//	}
func (s *MeshService) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive's name
	if !d.AllArgs(&s.Service) {
		return d.ArgErr()
	}
	block := args.NewBlock("allow_services")
	for d.NextBlock(0) {
		if err := block.Check(d); err != nil {
			return err
		}
		var err error
		switch d.Val() {
		case "namespace":
			err = args.String(d, &s.Namespace)
		case "allow_services":
			err = args.Append(d, &s.AllowServices)
		case "require_tag":
			err = args.String(d, &s.RequireTag)
		case "strip_path":
			err = args.Flag(d, &s.StripPath)
		case "consul":
			s.Consul = new(consul.Config)
			err = s.Consul.UnmarshalCaddyfile(d)
		default:
			return d.Errf("unrecognized mesh_service option '%s'", d.Val())
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

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	mesh_router {
//	    tag_prefix  <prefix>
//	    meta_prefix <prefix>
//	    require_tag <tag>
//	    fallback    404|next
//	    proxy {
//	        <reverse_proxy options, but upstreams and handle_response>
//	    }
//	    consul {
//	        ...
//	    }
//	}
func (rt *Router) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive's name
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
		case "tag_prefix":
			err = args.String(d, &rt.TagPrefix)
		case "meta_prefix":
			err = args.String(d, &rt.MetaPrefix)
		case "require_tag":
			err = args.String(d, &rt.RequireTag)
		case "fallback":
			err = args.String(d, &rt.Fallback)
		case "proxy":
			err = rt.parseProxy(d)
		case "consul":
			rt.Consul = new(consul.Config)
			err = rt.Consul.UnmarshalCaddyfile(d)
		default:
			return d.Errf("unrecognized mesh_router option '%s'", d.Val())
		}
		if err != nil {
			return err
		}
	}
	if err := rt.Validate(); err != nil {
		return d.Err(err.Error())
	}
	return nil
}

// parseProxy reads the proxy block with reverse_proxy's own parser.
func (rt *Router) parseProxy(d *caddyfile.Dispenser) error {
	segment := d.NextSegment()
	check := caddyfile.NewDispenser(segment)
	for check.Next(); check.NextBlock(0); {
		if check.Val() == "handle_response" && check.Nesting() == 1 {
			return check.Err("mesh_router proxy: handle_response is not supported here")
		}
	}
	proxy := new(reverseproxy.Handler)
	if err := proxy.UnmarshalCaddyfile(caddyfile.NewDispenser(segment)); err != nil {
		return err
	}
	if err := checkProxy(proxy); err != nil {
		return d.Err(err.Error())
	}
	rt.Proxy = caddyconfig.JSON(proxy, nil)
	return nil
}

// UnmarshalCaddyfile reads `permission mesh`, which takes no options.
func (CertificatePermission) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the module's name
	if d.NextArg() || d.NextBlock(0) {
		return d.Err("the mesh permission takes no options")
	}
	return nil
}

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*MeshService)(nil)
	_ caddyfile.Unmarshaler = (*Router)(nil)
	_ caddyfile.Unmarshaler = CertificatePermission{}
)
