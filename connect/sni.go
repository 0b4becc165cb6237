package connect

import (
	"bytes"
	"encoding/json"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"go.uber.org/zap"
)

// acceptConnectClients turns off Caddy's strict SNI-Host check on each
// HTTP server whose TLS connection policies all verify client certificates
// against Connect roots, in the same mode. Caddy turns the check on for
// any server with client authentication, and then answers 421 when the TLS
// server name and the Host differ: Connect clients send none (Consul's
// proxy) or a mesh name (Envoy), whatever the Host, so every one of them
// would get a 421. The check stops a client from fronting, with the server
// name of a lax policy, for a site behind a strict one; with the same
// client authentication for every connection of the server, there is
// nothing to front for. Caddy decides on the check just before it provisions the server's
// connection policies, whose trust pool calls this.
func acceptConnectClients(ctx caddy.Context) {
	app := enclosingHTTPApp(ctx)
	if app == nil {
		return
	}
	for name, srv := range app.Servers {
		if srv.StrictSNIHost != nil && *srv.StrictSNIHost && connectOnly(srv.TLSConnPolicies) {
			off := false
			srv.StrictSNIHost = &off
			caddy.Log().Named("mesh.connect").Info("strict SNI-Host enforcement off: every client certificate is verified against Consul's Connect roots",
				zap.String("server_id", name))
		}
	}
}

// enclosingHTTPApp returns the HTTP app that ctx is provisioning a module
// of, or nil.
func enclosingHTTPApp(ctx caddy.Context) *caddyhttp.App {
	for _, m := range ctx.Modules() {
		if app, ok := m.(*caddyhttp.App); ok {
			return app
		}
	}
	return nil
}

// connectOnly reports whether every policy verifies client certificates
// against a Connect trust pool not yet provisioned (its JSON still there),
// all with the same client authentication: one mode, one Consul, no
// verifier or trusted leaf that one policy has and another lacks.
func connectOnly(policies caddytls.ConnectionPolicies) bool {
	if len(policies) == 0 || policies[0].ClientAuthentication == nil || !isConnectPool(policies[0].ClientAuthentication.CARaw) {
		return false
	}
	first, err := json.Marshal(policies[0].ClientAuthentication)
	if err != nil {
		return false
	}
	for _, p := range policies[1:] {
		if p.ClientAuthentication == nil {
			return false
		}
		auth, err := json.Marshal(p.ClientAuthentication)
		if err != nil || !bytes.Equal(auth, first) {
			return false
		}
	}
	return true
}

// isConnectPool reports whether raw is the JSON of a connect trust pool.
func isConnectPool(raw json.RawMessage) bool {
	var module struct {
		Provider string `json:"provider"`
	}
	return json.Unmarshal(raw, &module) == nil && module.Provider == "connect"
}
