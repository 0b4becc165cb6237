package args

import (
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// options reads the options of the block of input with a Block, and
// returns the first error.
func options(input string, repeatable ...string) error {
	d := caddyfile.NewTestDispenser(input)
	d.Next()
	block := NewBlock(repeatable...)
	for d.NextBlock(0) {
		if err := block.Check(d); err != nil {
			return err
		}
		d.RemainingArgs()
	}
	return nil
}

func TestBlockRefusesASingleValuedOptionGivenTwice(t *testing.T) {
	err := options("x {\n\twait 1s\n\ttag a\n\twait 2s\n}", "tag")
	if err == nil || !strings.Contains(err.Error(), "option 'wait' given twice (first on line 2)") || !strings.Contains(err.Error(), ":4") {
		t.Errorf("error %v, want one naming wait, its first line (2) and the second (4)", err)
	}
}

func TestBlockLetsRepeatableOptionsRepeat(t *testing.T) {
	if err := options("x {\n\ttag a\n\ttag b\n\twait 1s\n}", "tag"); err != nil {
		t.Error(err)
	}
}
