package discovery

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/hashicorp/consul/api"
)

// defaultConsulAddress is where Consul is reached when neither the config nor
// CONSUL_HTTP_ADDR names an address.
const defaultConsulAddress = "127.0.0.1:8500"

// ConsulConfig says how to reach Consul. It appears in the mesh app, where it
// applies to every consul upstream source, and in a source, where it
// overrides the app's settings for that source.
//
// Each field falls back on its own: a field left empty in a source takes the
// app's value, then the value of Consul's standard environment variable
// (the one the consul CLI reads), then the default. Placeholders such as
// {env.CONSUL_HTTP_TOKEN} or {file./run/secrets/token} are expanded once,
// at provision; a placeholder that expands to nothing counts as empty.
type ConsulConfig struct {
	// Address of Consul's HTTP API: host:port, or a URL with scheme http://,
	// https:// or unix://. Default: CONSUL_HTTP_ADDR, else 127.0.0.1:8500.
	Address string `json:"address,omitempty"`

	// ACL token sent with every request. Prefer a placeholder such as
	// {env.CONSUL_HTTP_TOKEN} to writing the secret into the config: the
	// config is readable through Caddy's admin API, the expanded token never
	// is, nor does it ever appear in logs, errors or metrics.
	// Default: CONSUL_HTTP_TOKEN_FILE, else CONSUL_HTTP_TOKEN.
	Token string `json:"token,omitempty"`

	// File holding the ACL token, read once at provision; surrounding white
	// space is ignored. A token and a token file set at the same level are an
	// error; the more specific level wins over the other.
	TokenFile string `json:"token_file,omitempty"`

	// Datacenter to query when a source names none. Default: the datacenter
	// of the agent at Address.
	Datacenter string `json:"datacenter,omitempty"`

	// Admin partition (Consul Enterprise). Default: CONSUL_PARTITION, else
	// the token's partition.
	Partition string `json:"partition,omitempty"`

	// Namespace (Consul Enterprise). Default: CONSUL_NAMESPACE, else the
	// token's namespace.
	Namespace string `json:"namespace,omitempty"`

	// TLS settings for an https:// address.
	TLS *ConsulTLS `json:"tls,omitempty"`
}

// ConsulTLS configures TLS to Consul's HTTPS API.
type ConsulTLS struct {
	// PEM file of the CA certificates that sign Consul's server
	// certificate. Default: CONSUL_CACERT, else the system roots.
	CAFile string `json:"ca_file,omitempty"`

	// PEM client certificate, for Consul agents that verify incoming
	// HTTPS clients. Default: CONSUL_CLIENT_CERT.
	CertFile string `json:"cert_file,omitempty"`

	// PEM private key of CertFile. Default: CONSUL_CLIENT_KEY.
	KeyFile string `json:"key_file,omitempty"`

	// Server name to verify Consul's certificate against, when it differs
	// from the host in Address. Default: CONSUL_TLS_SERVER_NAME.
	ServerName string `json:"server_name,omitempty"`

	// Skip verification of Consul's certificate. Only for testing: it
	// exposes the ACL token to anyone on the path. Default: false, unless
	// CONSUL_HTTP_SSL_VERIFY=false.
	InsecureSkipVerify bool `json:"insecure_skip_verify,omitempty"`
}

// connection is a fully resolved way to reach Consul: every layer merged,
// placeholders expanded, the token read.
type connection struct {
	endpoint
	token string
}

// endpoint identifies a Consul connection in watch keys: it is comparable
// and holds a hash of the token, never the token.
type endpoint struct {
	address            string
	datacenter         string
	partition          string
	namespace          string
	caFile             string
	certFile           string
	keyFile            string
	serverName         string
	insecureSkipVerify bool
	tokenHash          string
}

// resolveConnection merges the given layers, most specific first, over
// Consul's environment variables and the default address.
func resolveConnection(layers ...*ConsulConfig) (connection, error) {
	env := api.DefaultConfig()
	repl := caddy.NewReplacer()
	var conn connection
	var tokenSet bool
	for _, layer := range layers {
		if layer == nil {
			continue
		}
		l := layer.expanded(repl)
		fill(&conn.address, l.Address)
		fill(&conn.datacenter, l.Datacenter)
		fill(&conn.partition, l.Partition)
		fill(&conn.namespace, l.Namespace)
		if t := l.TLS; t != nil {
			fill(&conn.caFile, t.CAFile)
			fill(&conn.certFile, t.CertFile)
			fill(&conn.keyFile, t.KeyFile)
			fill(&conn.serverName, t.ServerName)
			conn.insecureSkipVerify = conn.insecureSkipVerify || t.InsecureSkipVerify
		}
		if !tokenSet && (l.Token != "" || l.TokenFile != "") {
			token, err := l.readToken()
			if err != nil {
				return connection{}, err
			}
			conn.token, tokenSet = token, true
		}
	}
	fill(&conn.address, os.Getenv(api.HTTPAddrEnvName))
	fill(&conn.address, defaultConsulAddress)
	if err := checkConsulAddress(conn.address); err != nil {
		return connection{}, fmt.Errorf("consul: address %q: %v", conn.address, err)
	}
	fill(&conn.partition, env.Partition)
	fill(&conn.namespace, env.Namespace)
	fill(&conn.caFile, env.TLSConfig.CAFile)
	fill(&conn.certFile, env.TLSConfig.CertFile)
	fill(&conn.keyFile, env.TLSConfig.KeyFile)
	fill(&conn.serverName, env.TLSConfig.Address)
	conn.insecureSkipVerify = conn.insecureSkipVerify || env.TLSConfig.InsecureSkipVerify
	if !tokenSet {
		token, err := envToken(env)
		if err != nil {
			return connection{}, err
		}
		conn.token = token
	}
	if conn.token != "" {
		sum := sha256.Sum256([]byte(conn.token))
		conn.tokenHash = hex.EncodeToString(sum[:8])
	}
	return conn, conn.checkTLSFiles()
}

// fill sets *dst to value unless *dst is already set.
func fill(dst *string, value string) {
	if *dst == "" {
		*dst = value
	}
}

// expanded returns a copy of c with global placeholders ({env.*}, {file.*})
// replaced.
func (c *ConsulConfig) expanded(repl *caddy.Replacer) ConsulConfig {
	expand := func(s string) string { return repl.ReplaceKnown(s, "") }
	out := ConsulConfig{
		Address:    expand(c.Address),
		Token:      expand(c.Token),
		TokenFile:  expand(c.TokenFile),
		Datacenter: expand(c.Datacenter),
		Partition:  expand(c.Partition),
		Namespace:  expand(c.Namespace),
	}
	if c.TLS != nil {
		out.TLS = &ConsulTLS{
			CAFile:             expand(c.TLS.CAFile),
			CertFile:           expand(c.TLS.CertFile),
			KeyFile:            expand(c.TLS.KeyFile),
			ServerName:         expand(c.TLS.ServerName),
			InsecureSkipVerify: c.TLS.InsecureSkipVerify,
		}
	}
	return out
}

// readToken returns the layer's token, reading its token file if that is
// what the layer sets. Errors name the file, never the token.
func (c ConsulConfig) readToken() (string, error) {
	if c.Token != "" && c.TokenFile != "" {
		return "", fmt.Errorf("consul: token and token_file %q are both set; use one", c.TokenFile)
	}
	if c.TokenFile == "" {
		return c.Token, nil
	}
	data, err := os.ReadFile(c.TokenFile)
	if err != nil {
		return "", fmt.Errorf("consul: reading token_file %q: %w", c.TokenFile, err)
	}
	token := strings.TrimSpace(string(data))
	if token == "" {
		return "", fmt.Errorf("consul: token_file %q is empty", c.TokenFile)
	}
	return token, nil
}

// envToken follows the consul CLI: CONSUL_HTTP_TOKEN_FILE, else
// CONSUL_HTTP_TOKEN.
func envToken(env *api.Config) (string, error) {
	if env.TokenFile == "" {
		return env.Token, nil
	}
	data, err := os.ReadFile(env.TokenFile)
	if err != nil {
		return "", fmt.Errorf("consul: reading %s %q: %w", api.HTTPTokenFileEnvName, env.TokenFile, err)
	}
	return strings.TrimSpace(string(data)), nil
}

// checkTLSFiles loads the TLS files so that a missing or malformed one fails
// at provision, named, rather than on the first request to Consul.
func (c connection) checkTLSFiles() error {
	if c.caFile != "" {
		pem, err := os.ReadFile(c.caFile)
		if err != nil {
			return fmt.Errorf("consul tls: reading ca_file %q: %w", c.caFile, err)
		}
		if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			return fmt.Errorf("consul tls: ca_file %q holds no PEM certificate", c.caFile)
		}
	}
	if (c.certFile == "") != (c.keyFile == "") {
		return fmt.Errorf("consul tls: cert_file %q and key_file %q must be set together", c.certFile, c.keyFile)
	}
	if c.certFile != "" {
		if _, err := tls.LoadX509KeyPair(c.certFile, c.keyFile); err != nil {
			return fmt.Errorf("consul tls: loading cert_file %q and key_file %q: %w", c.certFile, c.keyFile, err)
		}
	}
	return nil
}

// NewConsulClient returns a client of Consul's API for settings layered
// over the mesh app's Consul settings, Consul's environment variables and
// the default address, resolved as for every caddymesh module. The client
// sends the ACL token with every request; closeIdle closes its idle
// connections. It serves modules outside this package (the consul_kv
// storage) until the connection code moves into a package of its own.
func NewConsulClient(ctx caddy.Context, settings *ConsulConfig) (client *api.Client, closeIdle func(), err error) {
	appConsul, err := appConsulConfig(ctx)
	if err != nil {
		return nil, nil, err
	}
	conn, err := resolveConnection(settings, appConsul)
	if err != nil {
		return nil, nil, err
	}
	client, httpClient, err := conn.newClient()
	if err != nil {
		return nil, nil, err
	}
	if conn.token != "" {
		client.AddHeader("X-Consul-Token", conn.token)
	}
	return client, httpClient.CloseIdleConnections, nil
}

// newClient returns an API client for the connection and the HTTP client
// beneath it, whose idle connections the caller closes when done. The token
// is not part of the client: callers send it with each query.
func (c connection) newClient() (*api.Client, *http.Client, error) {
	cfg := &api.Config{
		Address:   c.address,
		Partition: c.partition,
		Namespace: c.namespace,
		TLSConfig: api.TLSConfig{
			Address:            c.serverName,
			CAFile:             c.caFile,
			CertFile:           c.certFile,
			KeyFile:            c.keyFile,
			InsecureSkipVerify: c.insecureSkipVerify,
		},
	}
	client, err := api.NewClient(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("consul: address %q: %w", c.address, err)
	}
	return client, cfg.HttpClient, nil
}
