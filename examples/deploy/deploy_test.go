// Package deploy_test checks the deployment recipes beside it: the
// Caddyfile adapts, the systemd unit verifies and its stop timeout covers
// the registrations' drain, and the Dockerfile builds the Caddy version
// caddymesh is built against.
package deploy_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddymesh/caddymesh"
)

// longestDrain adapts the Caddyfile and returns its longest registration
// drain.
func longestDrain(t *testing.T) time.Duration {
	caddyfile, err := os.ReadFile("Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	config, _, err := caddyconfig.GetAdapter("caddyfile").Adapt(caddyfile, nil)
	if err != nil {
		t.Fatalf("the Caddyfile does not adapt: %v", err)
	}
	var adapted struct {
		Apps struct {
			Mesh struct {
				Register []struct {
					Drain time.Duration `json:"drain"`
				} `json:"register"`
			} `json:"mesh"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(config, &adapted); err != nil {
		t.Fatal(err)
	}
	var longest time.Duration
	for _, r := range adapted.Apps.Mesh.Register {
		longest = max(longest, r.Drain)
	}
	if longest == 0 {
		t.Fatal("the Caddyfile registers nothing with a drain")
	}
	return longest
}

func TestSystemdStopTimeoutCoversTheDrain(t *testing.T) {
	unit, err := os.ReadFile("caddy.service")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^TimeoutStopSec=(\S+)$`).FindSubmatch(unit)
	if m == nil {
		t.Fatal("caddy.service sets no TimeoutStopSec")
	}
	timeout, err := time.ParseDuration(string(m[1]))
	if err != nil {
		t.Fatal(err)
	}
	// Deregistering, the drain, then in-flight requests and Caddy's own stop.
	if drain := longestDrain(t); timeout < drain+10*time.Second {
		t.Errorf("TimeoutStopSec=%v does not cover the drain of %v plus 10s", timeout, drain)
	}
}

func TestSystemdUnitVerifies(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("systemd-analyze is not installed")
	}
	unit, err := os.ReadFile("caddy.service")
	if err != nil {
		t.Fatal(err)
	}
	// verify wants ExecStart's binary to exist: stand any executable in for
	// /usr/bin/caddy, which this machine need not have.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	copied := t.TempDir() + "/caddy.service"
	if err := os.WriteFile(copied, []byte(strings.ReplaceAll(string(unit), "/usr/bin/caddy", self)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("systemd-analyze", "verify", copied).CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

func TestDockerfileBuildsThePinnedCaddy(t *testing.T) {
	dockerfile, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	gomod, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	version := regexp.MustCompile(`github.com/caddyserver/caddy/v2 v(\S+)`).FindSubmatch(gomod)[1]
	for _, want := range []string{
		"FROM caddy:" + string(version) + "-builder AS builder",
		"xcaddy build v" + string(version) + " --with github.com/caddymesh/caddymesh=",
		"FROM caddy:" + string(version) + "\n",
	} {
		if !strings.Contains(string(dockerfile), want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
}
