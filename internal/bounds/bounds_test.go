package bounds

import (
	"math"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

func TestCheckNamesTheFieldAndTheValue(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"below", Check("points", 0, 1, 10), "points 0: must be from 1 to 10"},
		{"above", Check("points", 11, 1, 10), "points 11: must be from 1 to 10"},
		{"not a number", Check("ratio", math.NaN(), 0, 1), "ratio NaN: must be from 0 to 1"},
		{"zero is not the default", Duration("window", 0, time.Second, time.Hour), "window 0s: must be from 1s to 1h0m0s"},
		{"a few nanoseconds", DurationOrZero("window", 5, time.Second, time.Hour), "window 5ns: must be from 1s to 1h0m0s"},
		{"negative", CheckOrZero("queue", -1, 1, 5), "queue -1: must be from 1 to 5"},
	} {
		if tc.err == nil || tc.err.Error() != tc.want {
			t.Errorf("%s: error %v, want %q", tc.name, tc.err, tc.want)
		}
	}
}

func TestCheckAcceptsTheBoundsAndZeroWhereItIsTheDefault(t *testing.T) {
	for name, err := range map[string]error{
		"lower bound":        Check("points", 1, 1, 10),
		"upper bound":        Check("points", 10, 1, 10),
		"zero default":       CheckOrZero("queue", 0, 1, 5),
		"duration at bounds": Duration("window", caddy.Duration(time.Hour), time.Second, time.Hour),
		"duration default":   DurationOrZero("window", 0, time.Second, time.Hour),
	} {
		if err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}
