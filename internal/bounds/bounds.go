// Package bounds checks that config values lie within their documented
// range, with errors that name the field and the value.
package bounds

import (
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// Number is a count or a factor of a config.
type Number interface{ ~int | ~float64 }

// Check returns an error naming field and value when value lies outside
// [lo, hi] (or is not a number).
func Check[T Number](field string, value, lo, hi T) error {
	if !(value >= lo && value <= hi) {
		return fmt.Errorf("%s %v: must be from %v to %v", field, value, lo, hi)
	}
	return nil
}

// CheckOrZero is Check for a field whose zero means its default, or off.
func CheckOrZero[T Number](field string, value, lo, hi T) error {
	if value == 0 {
		return nil
	}
	return Check(field, value, lo, hi)
}

// Duration returns an error naming field and value when d lies outside
// [lo, hi].
func Duration(field string, d caddy.Duration, lo, hi time.Duration) error {
	if v := time.Duration(d); v < lo || v > hi {
		return fmt.Errorf("%s %s: must be from %s to %s", field, v, lo, hi)
	}
	return nil
}

// DurationOrZero is Duration for a field whose zero means its default, or
// off.
func DurationOrZero(field string, d caddy.Duration, lo, hi time.Duration) error {
	if d == 0 {
		return nil
	}
	return Duration(field, d, lo, hi)
}
