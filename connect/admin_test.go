package connect_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddymesh/caddymesh/internal/meshtest"
)

// leafShown is a leaf as GET /mesh/connect shows it.
type leafShown struct {
	Service     string    `json:"service"`
	Serial      string    `json:"serial"`
	SPIFFEID    string    `json:"spiffe_id"`
	ValidAfter  time.Time `json:"valid_after"`
	ValidBefore time.Time `json:"valid_before"`
}

// connectShown is what GET /mesh/connect answers.
type connectShown struct {
	Leaves []leafShown `json:"leaves"`
	Roots  []struct {
		TrustDomain string   `json:"trust_domain"`
		Active      string   `json:"active"`
		IDs         []string `json:"ids"`
	} `json:"roots"`
}

// adminConnect reads GET /mesh/connect, and its raw body.
func adminConnect(t *testing.T) (connectShown, string) {
	t.Helper()
	resp, err := meshtest.Client.Get(meshtest.AdminURL() + "/mesh/connect")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var shown connectShown
	if err := json.Unmarshal(body, &shown); err != nil {
		t.Fatalf("GET /mesh/connect: %v: %s", err, body)
	}
	return shown, string(body)
}

// adminLeaves returns the leaves GET /mesh/connect shows.
func adminLeaves(t *testing.T) []leafShown {
	shown, _ := adminConnect(t)
	return shown.Leaves
}

// TestAdminAndMetricsShowLeavesAndRoots checks GET /mesh/connect and
// caddy_mesh_connect_leaf_expiry_seconds against what the agent issued,
// and that neither shows a private key.
func TestAdminAndMetricsShowLeavesAndRoots(t *testing.T) {
	port := meshtest.FreePort()
	meshtest.Load(t, fmt.Sprintf("{\n\t%s\n\tmetrics\n}\n%s", globals(), inboundSite("api", port, "127.0.0.1:1")), "caddyfile")
	leaf, _, err := agent.Client.Agent().ConnectCALeaf("api", nil)
	if err != nil {
		t.Fatal(err)
	}
	roots, _, err := agent.Client.Agent().ConnectCARoots(nil)
	if err != nil {
		t.Fatal(err)
	}
	shown, body := adminConnect(t)
	wantID := "spiffe://" + roots.TrustDomain + "/ns/default/dc/dc1/svc/api"
	if len(shown.Leaves) != 1 || shown.Leaves[0].Service != "api" || shown.Leaves[0].Serial != leaf.SerialNumber ||
		shown.Leaves[0].SPIFFEID != wantID || !shown.Leaves[0].ValidBefore.Equal(leaf.ValidBefore) || !shown.Leaves[0].ValidAfter.Before(time.Now()) {
		t.Errorf("leaves %+v, want api's %s %s until %s", shown.Leaves, leaf.SerialNumber, wantID, leaf.ValidBefore)
	}
	if len(shown.Roots) != 1 || shown.Roots[0].TrustDomain != roots.TrustDomain || shown.Roots[0].Active != roots.ActiveRootID || len(shown.Roots[0].IDs) != len(roots.Roots) {
		t.Errorf("roots %+v, want trust domain %s, active %s", shown.Roots, roots.TrustDomain, roots.ActiveRootID)
	}
	metrics := scrape(t)
	expiry := regexp.MustCompile(`caddy_mesh_connect_leaf_expiry_seconds\{service="api"\} (\S+)`).FindStringSubmatch(metrics)
	if expiry == nil {
		t.Fatalf("no caddy_mesh_connect_leaf_expiry_seconds for api in:\n%s", metrics)
	}
	if value, _ := strconv.ParseFloat(expiry[1], 64); int64(value) != leaf.ValidBefore.Unix() {
		t.Errorf("caddy_mesh_connect_leaf_expiry_seconds %s, want %d", expiry[1], leaf.ValidBefore.Unix())
	}
	keyLine := strings.Split(leaf.PrivateKeyPEM, "\n")[1]
	for what, text := range map[string]string{"GET /mesh/connect": body, "the metrics": metrics} {
		if strings.Contains(text, "PRIVATE KEY") || strings.Contains(text, keyLine) {
			t.Errorf("%s show the private key", what)
		}
	}
	if file := fileHolding(t, caddy.AppDataDir(), keyLine); file != "" {
		t.Errorf("Caddy's storage holds the private key, in %s", file)
	}
}

// fileHolding returns a file under dir that holds text, or "".
func fileHolding(t *testing.T, dir, text string) string {
	t.Helper()
	var found string
	_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || found != "" {
			return nil
		}
		if data, err := os.ReadFile(path); err == nil && bytes.Contains(data, []byte(text)) {
			found = path
		}
		return nil
	})
	return found
}

// scrape returns the in-process Caddy's metrics.
func scrape(t *testing.T) string {
	t.Helper()
	resp, err := meshtest.Client.Get(meshtest.AdminURL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d", resp.StatusCode)
	}
	body, _ := io.ReadAll(resp.Body)
	return string(body)
}
