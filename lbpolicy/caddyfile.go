package lbpolicy

import (
	"encoding/json"
	"strconv"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddymesh/caddymesh/internal/args"
)

// UnmarshalCaddyfile sets up the policy from Caddyfile tokens. Syntax:
//
//	lb_policy smooth_weighted {
//	    weight <dial-address> <n> [<dial-address> <n> ...]
//	}
//
// weight is repeatable.
func (sw *SmoothWeighted) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the policy's name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "weight":
			if err := parseWeights(d, &sw.Weights); err != nil {
				return err
			}
		default:
			return d.Errf("unrecognized smooth_weighted option '%s'", d.Val())
		}
	}
	if err := sw.Validate(); err != nil {
		return d.Err(err.Error())
	}
	return nil
}

// UnmarshalCaddyfile sets up the policy from Caddyfile tokens. Syntax:
//
//	lb_policy consistent_hash [<key>] {
//	    points       <n>
//	    bounded_load <factor>
//	    weight       <dial-address> <n> [<dial-address> <n> ...]
//	    fallback     <policy> [<options>...]
//	}
func (ch *ConsistentHash) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the policy's name
	if err := args.Optional(d, &ch.Key); err != nil {
		return err
	}
	block := args.NewBlock("weight")
	for d.NextBlock(0) {
		if err := block.Check(d); err != nil {
			return err
		}
		var err error
		switch d.Val() {
		case "points":
			err = args.Int(d, &ch.Points)
		case "bounded_load":
			err = args.Float(d, &ch.BoundedLoad)
		case "weight":
			err = parseWeights(d, &ch.Weights)
		case "fallback":
			err = parseFallback(d, &ch.FallbackRaw)
		default:
			return d.Errf("unrecognized consistent_hash option '%s'", d.Val())
		}
		if err != nil {
			return err
		}
	}
	if err := ch.Validate(); err != nil {
		return d.Err(err.Error())
	}
	return nil
}

// UnmarshalCaddyfile sets up the policy from Caddyfile tokens. Syntax:
//
//	lb_policy least_latency {
//	    decay       <duration>
//	    default_rtt <duration>
//	}
func (ll *LeastLatency) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the policy's name
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
		case "decay":
			err = args.Duration(d, &ll.Decay)
		case "default_rtt":
			err = args.Duration(d, &ll.DefaultRTT)
		default:
			return d.Errf("unrecognized least_latency option '%s'", d.Val())
		}
		if err != nil {
			return err
		}
	}
	if err := ll.Validate(); err != nil {
		return d.Err(err.Error())
	}
	return nil
}

// parseWeights reads the dial-address and weight pairs of a weight line.
func parseWeights(d *caddyfile.Dispenser, weights *Weights) error {
	pairs := d.RemainingArgs()
	if len(pairs) == 0 || len(pairs)%2 != 0 {
		return d.Errf("weight takes pairs of a dial address and a weight, got %q", pairs)
	}
	if *weights == nil {
		*weights = make(Weights)
	}
	for i := 0; i < len(pairs); i += 2 {
		if _, given := (*weights)[pairs[i]]; given {
			return d.Errf("weight of %q given twice: it takes one value", pairs[i])
		}
		n, err := strconv.Atoi(pairs[i+1])
		if err != nil {
			return d.Errf("weight of %q: '%s' is not a whole number", pairs[i], pairs[i+1])
		}
		(*weights)[pairs[i]] = n
	}
	return nil
}

// parseFallback reads a fallback policy and its options, like Caddy's own
// hash policies do.
func parseFallback(d *caddyfile.Dispenser, raw *json.RawMessage) error {
	if !d.NextArg() {
		return d.ArgErr()
	}
	name := d.Val()
	module, err := caddyfile.UnmarshalModule(d, "http.reverse_proxy.selection_policies."+name)
	if err != nil {
		return err
	}
	selector, ok := module.(reverseproxy.Selector)
	if !ok {
		return d.Errf("fallback %s is not a selection policy", name)
	}
	*raw = caddyconfig.JSONModuleObject(selector, "policy", name, nil)
	return nil
}

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*SmoothWeighted)(nil)
	_ caddyfile.Unmarshaler = (*ConsistentHash)(nil)
	_ caddyfile.Unmarshaler = (*LeastLatency)(nil)
)
