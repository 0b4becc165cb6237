package middleware

import (
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddymesh/caddymesh/internal/args"
)

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	mesh_identity {
//	    from mtls
//	    from header <name> {
//	        trusted <cidr> ...
//	    }
//	    allow <service> ...
//	    deny  <service> ...
//	    trust_domain <domain> ...
//	    intentions [<destination>]
//	}
//
// from, allow, deny and trust_domain are repeatable.
func (id *Identity) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive's name
	if d.NextArg() {
		return d.ArgErr()
	}
	block := args.NewBlock("from", "allow", "deny", "trust_domain")
	for d.NextBlock(0) {
		if err := block.Check(d); err != nil {
			return err
		}
		var err error
		switch d.Val() {
		case "from":
			err = id.parseFrom(d)
		case "allow":
			err = args.Append(d, &id.Allow)
		case "deny":
			err = args.Append(d, &id.Deny)
		case "trust_domain":
			err = args.Append(d, &id.TrustDomains)
		case "intentions":
			err = id.parseIntentions(d)
		default:
			return d.Errf("unrecognized mesh_identity option '%s'", d.Val())
		}
		if err != nil {
			return err
		}
	}
	if err := id.Validate(); err != nil {
		return d.Err(err.Error())
	}
	return nil
}

// parseFrom reads `from mtls` or `from header <name> { trusted <cidr> ... }`.
func (id *Identity) parseFrom(d *caddyfile.Dispenser) error {
	var src IdentitySource
	if !d.NextArg() {
		return d.ArgErr()
	}
	src.Source = d.Val()
	if src.Source == "header" && !d.AllArgs(&src.Header) {
		return d.ArgErr()
	}
	if src.Source != "header" && d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "trusted":
			if err := args.Append(d, &src.Trusted); err != nil {
				return err
			}
		default:
			return d.Errf("unrecognized from option '%s'", d.Val())
		}
	}
	id.From = append(id.From, src)
	return nil
}

// parseIntentions reads `intentions [<destination>]` as the intentions
// source Consul provides.
func (id *Identity) parseIntentions(d *caddyfile.Dispenser) error {
	source, err := caddyfile.UnmarshalModule(d, "mesh.intentions.consul")
	if err != nil {
		return err
	}
	id.IntentionsRaw = caddyconfig.JSONModuleObject(source, "source", "consul", nil)
	return nil
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	mesh_breaker [<key>] {
//	    failure_ratio        <0..1>
//	    min_requests         <n>
//	    window               <duration>
//	    consecutive_failures <n>
//	    failure_status       <status> ...
//	    latency_threshold    <duration>
//	    open_for             <duration>
//	    half_open_requests   <n>
//	}
func (b *Breaker) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive's name
	if err := args.Optional(d, &b.Key); err != nil {
		return err
	}
	block := args.NewBlock("failure_status")
	for d.NextBlock(0) {
		if err := block.Check(d); err != nil {
			return err
		}
		var err error
		switch d.Val() {
		case "failure_ratio":
			err = args.Float(d, &b.FailureRatio)
		case "min_requests":
			err = args.Int(d, &b.MinRequests)
		case "window":
			err = args.Duration(d, &b.Window)
		case "consecutive_failures":
			err = args.Int(d, &b.ConsecutiveFailures)
		case "failure_status":
			err = args.Append(d, &b.FailureStatus)
		case "latency_threshold":
			err = args.Duration(d, &b.LatencyThreshold)
		case "open_for":
			err = args.Duration(d, &b.OpenFor)
		case "half_open_requests":
			err = args.Int(d, &b.HalfOpenRequests)
		default:
			return d.Errf("unrecognized mesh_breaker option '%s'", d.Val())
		}
		if err != nil {
			return err
		}
	}
	if err := b.Validate(); err != nil {
		return d.Err(err.Error())
	}
	return nil
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	mesh_limit [<key>] {
//	    rate          <n>/<unit>
//	    burst         <n>
//	    concurrency   <n>
//	    queue         <n>
//	    queue_timeout <duration>
//	}
func (l *Limit) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive's name
	if err := args.Optional(d, &l.Key); err != nil {
		return err
	}
	block := args.NewBlock()
	for d.NextBlock(0) {
		if err := block.Check(d); err != nil {
			return err
		}
		var err error
		switch d.Val() {
		case "rate":
			err = args.String(d, &l.Rate)
		case "burst":
			err = args.Int(d, &l.Burst)
		case "concurrency":
			err = args.Int(d, &l.Concurrency)
		case "queue":
			err = args.Int(d, &l.Queue)
		case "queue_timeout":
			err = args.Duration(d, &l.QueueTimeout)
		default:
			return d.Errf("unrecognized mesh_limit option '%s'", d.Val())
		}
		if err != nil {
			return err
		}
	}
	if err := l.Validate(); err != nil {
		return d.Err(err.Error())
	}
	return nil
}

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*Identity)(nil)
	_ caddyfile.Unmarshaler = (*Breaker)(nil)
	_ caddyfile.Unmarshaler = (*Limit)(nil)
)
