package lbpolicy

import (
	"encoding/json"
	"strconv"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
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
	if d.NextArg() {
		ch.Key = d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	for d.NextBlock(0) {
		var err error
		switch d.Val() {
		case "points":
			err = intArg(d, &ch.Points)
		case "bounded_load":
			err = floatArg(d, &ch.BoundedLoad)
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

// parseWeights reads the dial-address and weight pairs of a weight line.
func parseWeights(d *caddyfile.Dispenser, weights *Weights) error {
	args := d.RemainingArgs()
	if len(args) == 0 || len(args)%2 != 0 {
		return d.Errf("weight takes pairs of a dial address and a weight, got %q", args)
	}
	if *weights == nil {
		*weights = make(Weights)
	}
	for i := 0; i < len(args); i += 2 {
		n, err := strconv.Atoi(args[i+1])
		if err != nil {
			return d.Errf("weight of %q: '%s' is not a whole number", args[i], args[i+1])
		}
		(*weights)[args[i]] = n
	}
	return nil
}

// parseFallback reads a fallback policy and its options, like Caddy's own
// hash policies do.
func parseFallback(d *caddyfile.Dispenser, raw *json.RawMessage) error {
	if !d.NextArg() {
		return d.ArgErr()
	}
	if *raw != nil {
		return d.Err("fallback policy already specified")
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

// intArg reads the option's single argument as a whole number.
func intArg(d *caddyfile.Dispenser, dst *int) error {
	option, arg := d.Val(), ""
	if !d.AllArgs(&arg) {
		return d.ArgErr()
	}
	n, err := strconv.Atoi(arg)
	if err != nil {
		return d.Errf("%s '%s': not a whole number", option, arg)
	}
	*dst = n
	return nil
}

// floatArg reads the option's single argument as a number.
func floatArg(d *caddyfile.Dispenser, dst *float64) error {
	option, arg := d.Val(), ""
	if !d.AllArgs(&arg) {
		return d.ArgErr()
	}
	f, err := strconv.ParseFloat(arg, 64)
	if err != nil {
		return d.Errf("%s '%s': not a number", option, arg)
	}
	*dst = f
	return nil
}

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*SmoothWeighted)(nil)
	_ caddyfile.Unmarshaler = (*ConsistentHash)(nil)
)
