// Package args reads the arguments of Caddyfile options, with errors that
// name the option and the value.
package args

import (
	"slices"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// String reads the option's single argument into dst.
func String(d *caddyfile.Dispenser, dst *string) error {
	if !d.AllArgs(dst) {
		return d.ArgErr()
	}
	return nil
}

// Optional reads the option's argument into dst, when it has one; more
// than one is an error.
func Optional(d *caddyfile.Dispenser, dst *string) error {
	if d.NextArg() {
		*dst = d.Val()
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}

// Flag sets dst for an option that takes no argument.
func Flag(d *caddyfile.Dispenser, dst *bool) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	*dst = true
	return nil
}

// Append appends the option's arguments, at least one, to dst.
func Append(d *caddyfile.Dispenser, dst *[]string) error {
	args := d.RemainingArgs()
	if len(args) == 0 {
		return d.ArgErr()
	}
	*dst = append(*dst, args...)
	return nil
}

// Int reads the option's single argument as a whole number.
func Int(d *caddyfile.Dispenser, dst *int) error {
	return parse(d, dst, strconv.Atoi, "not a whole number")
}

// Float reads the option's single argument as a number.
func Float(d *caddyfile.Dispenser, dst *float64) error {
	return parse(d, dst, func(s string) (float64, error) { return strconv.ParseFloat(s, 64) }, "not a number")
}

// Duration reads the option's single argument as a duration, such as 5s
// or 1d.
func Duration(d *caddyfile.Dispenser, dst *caddy.Duration) error {
	return parse(d, dst, func(s string) (caddy.Duration, error) {
		dur, err := caddy.ParseDuration(s)
		return caddy.Duration(dur), err
	}, "not a duration")
}

// parse reads the option's single argument with convert.
func parse[T any](d *caddyfile.Dispenser, dst *T, convert func(string) (T, error), what string) error {
	option, arg := d.Val(), ""
	if err := String(d, &arg); err != nil {
		return err
	}
	value, err := convert(arg)
	if err != nil {
		return d.Errf("%s '%s': %s", option, arg, what)
	}
	*dst = value
	return nil
}

// Block keeps track of the options given in one block, so that an option
// that takes a single value cannot be given twice: the second would
// otherwise silently replace the first.
type Block struct {
	repeatable []string
	lines      map[string]int // option: the line it was first given on
}

// NewBlock tracks a block whose options are all single-valued but for
// repeatable.
func NewBlock(repeatable ...string) *Block {
	return &Block{repeatable: repeatable, lines: make(map[string]int)}
}

// Check refuses the option at d when it is single-valued and was given
// before in the block, naming it and both lines.
func (b *Block) Check(d *caddyfile.Dispenser) error {
	option := d.Val()
	if slices.Contains(b.repeatable, option) {
		return nil
	}
	if line, seen := b.lines[option]; seen {
		return d.Errf("option '%s' given twice (first on line %d): it takes one value", option, line)
	}
	b.lines[option] = d.Line()
	return nil
}
