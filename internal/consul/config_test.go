package consul

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// clearConsulEnv unsets every CONSUL_* variable for the test.
func clearConsulEnv(t *testing.T) {
	for _, kv := range os.Environ() {
		if name, _, _ := strings.Cut(kv, "="); strings.HasPrefix(name, "CONSUL_") {
			t.Setenv(name, "")
			os.Unsetenv(name)
		}
	}
}

func writeFile(t *testing.T, name, content string) string {
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestResolveConnectionPrecedence(t *testing.T) {
	tests := []struct {
		name          string
		env           map[string]string
		source, app   *Config
		wantAddress   string
		wantToken     string
		wantDC        string
		wantNamespace string
	}{
		{name: "nothing set gives the default address and no token",
			wantAddress: "127.0.0.1:8500"},
		{name: "environment variables apply when the config is silent",
			env:         map[string]string{"CONSUL_HTTP_ADDR": "10.0.0.1:8500", "CONSUL_HTTP_TOKEN": "env-token", "CONSUL_NAMESPACE": "env-ns"},
			wantAddress: "10.0.0.1:8500", wantToken: "env-token", wantNamespace: "env-ns"},
		{name: "the app overrides the environment",
			env:         map[string]string{"CONSUL_HTTP_ADDR": "10.0.0.1:8500", "CONSUL_HTTP_TOKEN": "env-token"},
			app:         &Config{Address: "10.0.0.2:8500", Token: "app-token"},
			wantAddress: "10.0.0.2:8500", wantToken: "app-token"},
		{name: "the source overrides the app field by field",
			app:         &Config{Address: "10.0.0.2:8500", Token: "app-token", Datacenter: "dc1"},
			source:      &Config{Datacenter: "dc2"},
			wantAddress: "10.0.0.2:8500", wantToken: "app-token", wantDC: "dc2"},
		{name: "placeholders are expanded",
			env:         map[string]string{"MY_TOKEN": "from-placeholder", "MY_ADDR": "10.0.0.3:8500"},
			app:         &Config{Address: "{env.MY_ADDR}", Token: "{env.MY_TOKEN}"},
			wantAddress: "10.0.0.3:8500", wantToken: "from-placeholder"},
		{name: "a placeholder that expands to nothing falls back",
			env:         map[string]string{"CONSUL_HTTP_TOKEN": "env-token"},
			source:      &Config{Token: "{env.UNSET_VARIABLE}"},
			app:         &Config{Token: "app-token"},
			wantAddress: "127.0.0.1:8500", wantToken: "app-token"},
		{name: "the token file in the environment wins over the token in the environment",
			env:         map[string]string{"CONSUL_HTTP_TOKEN": "env-token", "CONSUL_HTTP_TOKEN_FILE": "TOKENFILE"},
			wantAddress: "127.0.0.1:8500", wantToken: "file-token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearConsulEnv(t)
			tokenFile := writeFile(t, "token", "  file-token\n")
			for k, v := range tt.env {
				t.Setenv(k, strings.ReplaceAll(v, "TOKENFILE", tokenFile))
			}
			conn, err := Resolve(tt.source, tt.app)
			if err != nil {
				t.Fatal(err)
			}
			if conn.Address != tt.wantAddress || conn.token != tt.wantToken ||
				conn.Datacenter != tt.wantDC || conn.Namespace != tt.wantNamespace {
				t.Errorf("got address %q token %q dc %q namespace %q, want %q %q %q %q",
					conn.Address, conn.token, conn.Datacenter, conn.Namespace,
					tt.wantAddress, tt.wantToken, tt.wantDC, tt.wantNamespace)
			}
		})
	}
}

func TestResolveConnectionReadsTokenFile(t *testing.T) {
	clearConsulEnv(t)
	path := writeFile(t, "token", "s3cr3t\n")
	conn, err := Resolve(&Config{TokenFile: path}, &Config{Token: "app-token"})
	if err != nil {
		t.Fatal(err)
	}
	if conn.token != "s3cr3t" {
		t.Errorf("token = %q, want the file's content", conn.token)
	}
	if conn.TokenHash == "" || strings.Contains(conn.TokenHash, "s3cr3t") {
		t.Errorf("token hash %q must identify the token without revealing it", conn.TokenHash)
	}
	other, _ := Resolve(&Config{Token: "other"})
	if other.Endpoint == conn.Endpoint {
		t.Error("connections with different tokens must have different endpoints")
	}
}

func TestResolveConnectionErrorsNameFieldAndValue(t *testing.T) {
	clearConsulEnv(t)
	const token = "super-secret-token"
	dir := t.TempDir()
	certFile, keyFile := writeCertificate(t, dir)
	notPEM := writeFile(t, "ca.txt", "not a certificate")
	emptyToken := writeFile(t, "empty", "\n")
	tests := []struct {
		name   string
		config *Config
		want   []string
	}{
		{"unreadable token file", &Config{TokenFile: "/nonexistent/token"},
			[]string{"token_file", "/nonexistent/token"}},
		{"empty token file", &Config{TokenFile: emptyToken},
			[]string{"token_file", emptyToken, "empty"}},
		{"token and token file together", &Config{Token: token, TokenFile: emptyToken},
			[]string{"token_file", emptyToken}},
		{"missing CA file", &Config{Token: token, TLS: &TLS{CAFile: "/nonexistent/ca.pem"}},
			[]string{"ca_file", "/nonexistent/ca.pem"}},
		{"CA file without a certificate", &Config{Token: token, TLS: &TLS{CAFile: notPEM}},
			[]string{"ca_file", notPEM}},
		{"certificate without key", &Config{Token: token, TLS: &TLS{CertFile: certFile}},
			[]string{"cert_file", certFile, "key_file"}},
		{"key that does not match", &Config{Token: token, TLS: &TLS{CertFile: certFile, KeyFile: notPEM}},
			[]string{"cert_file", "key_file", notPEM}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Resolve(tt.config)
			if err == nil {
				t.Fatal("want an error")
			}
			for _, want := range tt.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not name %q", err, want)
				}
			}
			if strings.Contains(err.Error(), token) {
				t.Errorf("error %q reveals the token", err)
			}
		})
	}
	t.Run("valid TLS files", func(t *testing.T) {
		_, err := Resolve(&Config{TLS: &TLS{CAFile: certFile, CertFile: certFile, KeyFile: keyFile}})
		if err != nil {
			t.Fatal(err)
		}
	})
}

// writeCertificate writes a self-signed certificate and its key as PEM.
func writeCertificate(t *testing.T, dir string) (certFile, keyFile string) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	template := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "consul.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600)
	return certFile, keyFile
}
