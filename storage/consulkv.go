// Package storage holds caddy.storage.consul_kv: Caddy's certificate
// storage in Consul's KV store, with certmagic's distributed locks as Consul
// sessions, so that a fleet of Caddy instances shares one set of
// certificates and orders each one once.
package storage

import (
	"context"
	"crypto/cipher"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"

	"github.com/caddymesh/caddymesh/internal/consul"
	"github.com/caddymesh/caddymesh/internal/running"
	"github.com/caddymesh/caddymesh/internal/validate"
)

func init() {
	caddy.RegisterModule(new(ConsulKV))
}

// defaultPrefix is the KV prefix when the config names none.
const defaultPrefix = "caddy"

// ConsulKV stores Caddy's certificates, keys and ACME state in Consul's KV
// store under a prefix, and implements certmagic's locks with Consul
// sessions: every Caddy of a fleet that names the same Consul and prefix
// sees the same certificates, and only one of them orders a certificate at
// a time.
//
// A lock is a key under <prefix>/locks/ acquired by a Consul session of its
// own, with a TTL of 10s, renewed while the lock is held, and the delete
// behavior: when the holder dies or loses Consul, Consul invalidates the
// session (within twice the TTL, as Consul grants) and deletes the key,
// and a waiting instance takes the lock.
//
// Reads use Consul's default consistency (the leader answers), not stale
// reads: certmagic checks storage right after it takes a lock, to find a
// certificate another instance just stored, and a stale answer there would
// order the certificate twice. A read always sees this instance's own
// writes.
type ConsulKV struct {
	// Prefix of every key in Consul's KV store, without leading or trailing
	// slash. Instances that share certificates name the same prefix.
	// Default: caddy.
	Prefix string `json:"prefix,omitempty"`

	// File holding a 256-bit key, base64-encoded (`openssl rand -base64 32`),
	// with which every value is sealed with AES-256-GCM before it leaves
	// Caddy, bound to its key name. Without it values are stored as Caddy
	// writes them (private keys in PEM): protect the prefix with Consul ACLs.
	// There is no default key.
	AESKeyFile string `json:"aes_key_file,omitempty"`

	// How to reach Consul. Each setting left empty takes the mesh app's,
	// then Consul's environment variables (CONSUL_HTTP_ADDR,
	// CONSUL_HTTP_TOKEN...). The storage uses the datacenter of the agent it
	// talks to, as Consul sessions belong to the agent's datacenter; naming
	// another datacenter here is an error.
	Consul *consul.Config `json:"consul,omitempty"`

	client    *api.Client
	closeIdle func()
	aead      cipher.AEAD // nil when values are stored as they are
	logger    *zap.Logger
	locks     locks
	validated validate.Once // Validate's answer, for Caddy's call after Provision
}

// instances are the provisioned storages, for the admin API.
var instances running.Set[*ConsulKV]

// CaddyModule returns the Caddy module information.
func (*ConsulKV) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "caddy.storage.consul_kv",
		New: func() caddy.Module { return new(ConsulKV) },
	}
}

// Provision checks the settings, reads the key file and connects to Consul.
func (s *ConsulKV) Provision(ctx caddy.Context) error {
	s.logger = ctx.Logger()
	if s.Prefix == "" {
		s.Prefix = defaultPrefix
	}
	if err := s.Validate(); err != nil {
		return err
	}
	if s.AESKeyFile != "" {
		var err error
		if s.aead, err = loadAEAD(s.AESKeyFile); err != nil {
			return err
		}
	}
	client, closeIdle, err := consul.NewClient(ctx, s.Consul)
	if err != nil {
		return fmt.Errorf("consul_kv: %w", err)
	}
	s.client, s.closeIdle = client, closeIdle
	s.locks.start()
	instances.Add(s)
	return nil
}

// Validate rejects settings that cannot work, naming the field and value.
// Provision calls it before acting on them; its checks run once.
func (s *ConsulKV) Validate() error { return s.validated.Do(s.check) }

// check makes Validate's checks.
func (s *ConsulKV) check() error {
	if strings.HasPrefix(s.Prefix, "/") || strings.HasSuffix(s.Prefix, "/") {
		return fmt.Errorf("consul_kv: prefix %q: no leading or trailing slash", s.Prefix)
	}
	if s.Consul != nil && s.Consul.Datacenter != "" {
		return fmt.Errorf("consul_kv: consul datacenter %q: the storage uses the agent's own datacenter, where its lock sessions live", s.Consul.Datacenter)
	}
	return nil
}

// Cleanup releases the locks this instance still holds, stops their
// renewers and closes idle connections to Consul.
func (s *ConsulKV) Cleanup() error {
	if s.client == nil { // Provision failed before connecting
		return nil
	}
	instances.Remove(s)
	s.locks.stop(func(l *lease) error { return s.endLease(context.Background(), l) })
	s.closeIdle()
	return nil
}

// CertMagicStorage returns the storage itself, for Caddy and certmagic.
func (s *ConsulKV) CertMagicStorage() (certmagic.Storage, error) {
	return s, nil
}

// String names the storage in certmagic's logs.
func (s *ConsulKV) String() string {
	return "consul_kv:" + s.Prefix
}

// kvKey is the Consul key of a storage key; the empty key is the prefix.
func (s *ConsulKV) kvKey(key string) string {
	key = strings.Trim(key, "/")
	if key == "" {
		return s.Prefix
	}
	return s.Prefix + "/" + key
}

// storageKey is the storage key of a Consul key under the prefix.
func (s *ConsulKV) storageKey(kvKey string) string {
	return strings.TrimPrefix(kvKey, s.Prefix+"/")
}

// opError is the error of a storage operation on key: it names both, never
// the token (which travels in a header, and is not in the API's errors).
func opError(op, key string, err error) error {
	return fmt.Errorf("consul_kv: %s %q: %w", op, key, err)
}

// query is the read options of a call bound to ctx.
func query(ctx context.Context) *api.QueryOptions {
	return (&api.QueryOptions{}).WithContext(ctx)
}

// write is the write options of a call bound to ctx.
func write(ctx context.Context) *api.WriteOptions {
	return (&api.WriteOptions{}).WithContext(ctx)
}

// modified is the time a value was stored, which the storage keeps in the
// KV pair's flags as Unix nanoseconds.
func modified(pair *api.KVPair) time.Time {
	if pair.Flags == 0 {
		return time.Time{}
	}
	return time.Unix(0, int64(pair.Flags))
}

var errNotHeld = errors.New("not held by this instance")

// Interface guards
var (
	_ caddy.Provisioner          = (*ConsulKV)(nil)
	_ caddy.Validator            = (*ConsulKV)(nil)
	_ caddy.CleanerUpper         = (*ConsulKV)(nil)
	_ caddy.StorageConverter     = (*ConsulKV)(nil)
	_ certmagic.Storage          = (*ConsulKV)(nil)
	_ certmagic.TryLocker        = (*ConsulKV)(nil)
	_ certmagic.LockLeaseRenewer = (*ConsulKV)(nil)
)
