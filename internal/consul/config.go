package consul

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

// Config says how to reach Consul. It appears in the mesh app, where it
// applies to every consul upstream source, and in a source, where it
// overrides the app's settings for that source.
//
// Each field falls back on its own: a field left empty in a source takes the
// app's value, then the value of Consul's standard environment variable
// (the one the consul CLI reads), then the default. Placeholders such as
// {env.CONSUL_HTTP_TOKEN} or {file./run/secrets/token} are expanded once,
// at provision; a placeholder that expands to nothing counts as empty.
type Config struct {
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
	TLS *TLS `json:"tls,omitempty"`
}

// TLS configures TLS to Consul's HTTPS API.
type TLS struct {
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

// Connection is a fully resolved way to reach Consul: every layer merged,
// placeholders expanded, the token read. It never prints its token.
type Connection struct {
	Endpoint
	token string
}

// Endpoint identifies a Consul connection in watch keys: it is comparable
// and holds a hash of the token, never the token.
type Endpoint struct {
	// Address of Consul's HTTP API, as Config.Address.
	Address string
	// Datacenter, Partition and Namespace, as in Config: the defaults of
	// the connection's queries.
	Datacenter string
	// Partition is the admin partition (Enterprise).
	Partition string
	// Namespace is the namespace (Enterprise).
	Namespace string
	// CAFile, CertFile, KeyFile, ServerName and InsecureSkipVerify are the
	// TLS settings, as in TLS.
	CAFile string
	// CertFile is the client certificate's file.
	CertFile string
	// KeyFile is the client key's file.
	KeyFile string
	// ServerName is the name Consul's certificate is verified against.
	ServerName string
	// InsecureSkipVerify skips verifying Consul's certificate.
	InsecureSkipVerify bool
	// TokenHash is a hash of the ACL token, so that connections with
	// different tokens differ; never the token.
	TokenHash string
}

// Token is the ACL token to send with each query. Never log it.
func (c Connection) Token() string { return c.token }

// String describes the connection without its token.
func (c Connection) String() string {
	return fmt.Sprintf("consul %s (datacenter %q)", c.Address, c.Datacenter)
}

// Resolve merges the given layers, most specific first, over Consul's
// environment variables and the default address.
func Resolve(layers ...*Config) (Connection, error) {
	env := api.DefaultConfig()
	repl := caddy.NewReplacer()
	var conn Connection
	var tokenSet bool
	for _, layer := range layers {
		if layer == nil {
			continue
		}
		l := layer.expanded(repl)
		fill(&conn.Address, l.Address)
		fill(&conn.Datacenter, l.Datacenter)
		fill(&conn.Partition, l.Partition)
		fill(&conn.Namespace, l.Namespace)
		if t := l.TLS; t != nil {
			fill(&conn.CAFile, t.CAFile)
			fill(&conn.CertFile, t.CertFile)
			fill(&conn.KeyFile, t.KeyFile)
			fill(&conn.ServerName, t.ServerName)
			conn.InsecureSkipVerify = conn.InsecureSkipVerify || t.InsecureSkipVerify
		}
		if !tokenSet && (l.Token != "" || l.TokenFile != "") {
			token, err := l.readToken()
			if err != nil {
				return Connection{}, err
			}
			conn.token, tokenSet = token, true
		}
	}
	fill(&conn.Address, os.Getenv(api.HTTPAddrEnvName))
	fill(&conn.Address, defaultConsulAddress)
	if err := checkConsulAddress(conn.Address); err != nil {
		return Connection{}, fmt.Errorf("consul: address %q: %v", conn.Address, err)
	}
	fill(&conn.Partition, env.Partition)
	fill(&conn.Namespace, env.Namespace)
	fill(&conn.CAFile, env.TLSConfig.CAFile)
	fill(&conn.CertFile, env.TLSConfig.CertFile)
	fill(&conn.KeyFile, env.TLSConfig.KeyFile)
	fill(&conn.ServerName, env.TLSConfig.Address)
	conn.InsecureSkipVerify = conn.InsecureSkipVerify || env.TLSConfig.InsecureSkipVerify
	if !tokenSet {
		token, err := envToken(env)
		if err != nil {
			return Connection{}, err
		}
		conn.token = token
	}
	if conn.token != "" {
		sum := sha256.Sum256([]byte(conn.token))
		conn.TokenHash = hex.EncodeToString(sum[:8])
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
func (c *Config) expanded(repl *caddy.Replacer) Config {
	expand := func(s string) string { return repl.ReplaceKnown(s, "") }
	out := Config{
		Address:    expand(c.Address),
		Token:      expand(c.Token),
		TokenFile:  expand(c.TokenFile),
		Datacenter: expand(c.Datacenter),
		Partition:  expand(c.Partition),
		Namespace:  expand(c.Namespace),
	}
	if c.TLS != nil {
		out.TLS = &TLS{
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
func (c Config) readToken() (string, error) {
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
func (c Connection) checkTLSFiles() error {
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return fmt.Errorf("consul tls: reading ca_file %q: %w", c.CAFile, err)
		}
		if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			return fmt.Errorf("consul tls: ca_file %q holds no PEM certificate", c.CAFile)
		}
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return fmt.Errorf("consul tls: cert_file %q and key_file %q must be set together", c.CertFile, c.KeyFile)
	}
	if c.CertFile != "" {
		if _, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile); err != nil {
			return fmt.Errorf("consul tls: loading cert_file %q and key_file %q: %w", c.CertFile, c.KeyFile, err)
		}
	}
	return nil
}

// NewClient returns a client of Consul's API for settings layered over
// the mesh app's Consul settings, Consul's environment variables and the
// default address, resolved as for every caddymesh module. The client
// sends the ACL token with every request; closeIdle closes its idle
// connections. It is for modules that query Consul themselves rather than
// through a shared watch (the consul_kv storage).
func NewClient(ctx caddy.Context, settings *Config) (client *api.Client, closeIdle func(), err error) {
	appConsul, err := AppConfig(ctx)
	if err != nil {
		return nil, nil, err
	}
	conn, err := Resolve(settings, appConsul)
	if err != nil {
		return nil, nil, err
	}
	client, httpClient, err := conn.NewClient()
	if err != nil {
		return nil, nil, err
	}
	if conn.token != "" {
		client.AddHeader("X-Consul-Token", conn.token)
	}
	return client, httpClient.CloseIdleConnections, nil
}

// NewClient returns an API client for the connection and the HTTP client
// beneath it, whose idle connections the caller closes when done. The token
// is not part of the client: callers send it with each query.
func (c Connection) NewClient() (*api.Client, *http.Client, error) {
	cfg := &api.Config{
		Address:   c.Address,
		Partition: c.Partition,
		Namespace: c.Namespace,
		TLSConfig: api.TLSConfig{
			Address:            c.ServerName,
			CAFile:             c.CAFile,
			CertFile:           c.CertFile,
			KeyFile:            c.KeyFile,
			InsecureSkipVerify: c.InsecureSkipVerify,
		},
	}
	client, err := api.NewClient(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("consul: address %q: %w", c.Address, err)
	}
	return client, cfg.HttpClient, nil
}
