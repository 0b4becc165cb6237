package storage

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/caddymesh/caddymesh/internal/consul"
)

// TestStorageContract runs certmagic's Storage contract (its doc comments:
// certmagic v0.25.6 ships no conformance suite) against a real Consul, in
// the clear and sealed with aes_key_file.
func TestStorageContract(t *testing.T) {
	for _, sealed := range []bool{false, true} {
		name := "in_the_clear"
		s := &ConsulKV{Prefix: "contract/clear"}
		if sealed {
			name = "sealed_with_aes_key_file"
			s = &ConsulKV{Prefix: "contract/sealed", AESKeyFile: keyFile(t)}
		}
		t.Run(name, func(t *testing.T) { testContract(t, newStorage(t, s)) })
	}
}

func testContract(t *testing.T, s *ConsulKV) {
	ctx := context.Background()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	before := time.Now()
	must(s.Store(ctx, "certs/a.example/a.example.crt", []byte("cert a")))
	must(s.Store(ctx, "certs/a.example/a.example.key", []byte("key a")))
	must(s.Store(ctx, "certs/ab.example/ab.example.crt", []byte("cert ab")))
	must(s.Store(ctx, "acme/account.json", []byte("{}")))

	t.Run("load_returns_the_last_value_stored", func(t *testing.T) {
		must(s.Store(ctx, "certs/a.example/a.example.key", []byte("key a, renewed")))
		got, err := s.Load(ctx, "certs/a.example/a.example.key")
		if err != nil || string(got) != "key a, renewed" {
			t.Errorf("Load = %q, %v; want the value just stored", got, err)
		}
	})
	t.Run("load_list_stat_of_a_missing_key_are_fs.ErrNotExist", func(t *testing.T) {
		_, errLoad := s.Load(ctx, "certs/missing")
		_, errList := s.List(ctx, "certs/missing", true)
		_, errStat := s.Stat(ctx, "certs/missing")
		for op, err := range map[string]error{"Load": errLoad, "List": errList, "Stat": errStat} {
			if !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("%s of a missing key: %v, want fs.ErrNotExist", op, err)
			}
			if err != nil && !strings.Contains(err.Error(), `"certs/missing"`) {
				t.Errorf("%s's error %q does not name the key", op, err)
			}
		}
	})
	t.Run("stat_of_a_value_is_terminal_with_size_and_time", func(t *testing.T) {
		info, err := s.Stat(ctx, "certs/a.example/a.example.crt")
		must(err)
		if !info.IsTerminal || info.Size != int64(len("cert a")) || info.Key != "certs/a.example/a.example.crt" {
			t.Errorf("Stat = %+v, want a terminal key of %d bytes", info, len("cert a"))
		}
		if info.Modified.Before(before.Add(-time.Second)) || info.Modified.After(time.Now()) {
			t.Errorf("Modified = %v, want between %v and now", info.Modified, before)
		}
	})
	t.Run("stat_of_a_directory_is_not_terminal", func(t *testing.T) {
		for _, dir := range []string{"certs", "certs/a.example"} {
			info, err := s.Stat(ctx, dir)
			if err != nil || info.IsTerminal || info.Key != dir {
				t.Errorf("Stat(%q) = %+v, %v; want a directory", dir, info, err)
			}
		}
	})
	t.Run("exists_for_values_and_directories_only", func(t *testing.T) {
		for key, want := range map[string]bool{
			"certs": true, "certs/a.example": true, "certs/a.example/a.example.crt": true,
			"cert": false, "certs/a": false, "certs/a.example/a.example": false,
		} {
			if got := s.Exists(ctx, key); got != want {
				t.Errorf("Exists(%q) = %v, want %v", key, got, want)
			}
		}
	})
	t.Run("list_not_recursive_gives_direct_children", func(t *testing.T) {
		got, err := s.List(ctx, "certs", false)
		must(err)
		if want := []string{"certs/a.example", "certs/ab.example"}; !slices.Equal(got, want) {
			t.Errorf("List(certs, false) = %q, want %q", got, want)
		}
	})
	t.Run("list_recursive_walks_values_and_directories", func(t *testing.T) {
		got, err := s.List(ctx, "", true)
		must(err)
		want := []string{"acme", "acme/account.json", "certs", "certs/a.example", "certs/a.example/a.example.crt",
			"certs/a.example/a.example.key", "certs/ab.example", "certs/ab.example/ab.example.crt"}
		if !slices.Equal(got, want) {
			t.Errorf("List(\"\", true) = %q, want %q", got, want)
		}
	})
	t.Run("delete_of_a_directory_deletes_what_it_holds_only", func(t *testing.T) {
		must(s.Delete(ctx, "certs/a.example"))
		if s.Exists(ctx, "certs/a.example") || s.Exists(ctx, "certs/a.example/a.example.key") {
			t.Error("certs/a.example is still there")
		}
		if !s.Exists(ctx, "certs/ab.example/ab.example.crt") {
			t.Error("deleting certs/a.example deleted certs/ab.example too")
		}
	})
	t.Run("delete_of_a_missing_key_is_no_error", func(t *testing.T) {
		must(s.Delete(ctx, "certs/never-stored"))
	})
	t.Run("values_up_to_consuls_limit_are_stored_larger_refused", func(t *testing.T) {
		largest := bytes.Repeat([]byte{'x'}, maxValueSize-s.overhead())
		must(s.Store(ctx, "big", largest))
		got, err := s.Load(ctx, "big")
		if err != nil || !bytes.Equal(got, largest) {
			t.Errorf("Load of the largest value: %d bytes, %v; want %d", len(got), err, len(largest))
		}
		err = s.Store(ctx, "big", append(largest, 'x'))
		if err == nil || !strings.Contains(err.Error(), `store "big"`) || !strings.Contains(err.Error(), "524288") {
			t.Errorf("Store of one byte more: %v, want an error naming the key and the limit", err)
		}
	})
}

// TestSealedValuesAreUnreadableWithoutTheKey stores through a sealed
// storage and reads Consul directly: no plaintext, and a value moved to
// another key does not open.
func TestSealedValuesAreUnreadableWithoutTheKey(t *testing.T) {
	ctx := context.Background()
	s := newStorage(t, &ConsulKV{Prefix: "sealed", AESKeyFile: keyFile(t)})
	if err := s.Store(ctx, "a.key", []byte("PRIVATE KEY")); err != nil {
		t.Fatal(err)
	}
	pair, _, err := agent.Client.KV().Get("sealed/a.key", nil)
	if err != nil || pair == nil {
		t.Fatalf("reading Consul: %v, %v", pair, err)
	}
	if bytes.Contains(pair.Value, []byte("PRIVATE")) || len(pair.Value) != len("PRIVATE KEY")+s.overhead() {
		t.Errorf("Consul holds %q, want %d sealed bytes", pair.Value, len("PRIVATE KEY")+s.overhead())
	}
	pair.Key = "sealed/b.key"
	if _, err := agent.Client.KV().Put(pair, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(ctx, "b.key"); err == nil || !strings.Contains(err.Error(), "does not open") {
		t.Errorf("Load of a value moved to another key: %v, want an error", err)
	}
	other := newStorage(t, &ConsulKV{Prefix: "sealed", AESKeyFile: keyFile(t)})
	if _, err := other.Load(ctx, "a.key"); err == nil {
		t.Error("a storage with another key opened the value")
	}
}

func TestProvisionErrors(t *testing.T) {
	dir := t.TempDir()
	short := filepath.Join(dir, "short.key")
	os.WriteFile(short, []byte(base64.StdEncoding.EncodeToString(make([]byte, 16))), 0o600)
	for _, tc := range []struct {
		name string
		s    *ConsulKV
		want string
	}{
		{"prefix_with_leading_slash", &ConsulKV{Prefix: "/caddy"}, `prefix "/caddy"`},
		{"missing_key_file", &ConsulKV{AESKeyFile: filepath.Join(dir, "none")}, "reading aes_key_file"},
		{"key_of_16_bytes", &ConsulKV{AESKeyFile: short}, `aes_key_file "` + short + `" must hold 32 bytes`},
		{"datacenter", &ConsulKV{Consul: &consul.Config{Datacenter: "dc2"}}, `datacenter "dc2"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := caddyContext()
			defer cancel()
			err := tc.s.Provision(ctx)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Provision: %v, want an error containing %q", err, tc.want)
			}
			if err := tc.s.Cleanup(); err != nil {
				t.Errorf("Cleanup after a failed Provision: %v", err)
			}
		})
	}
}

// TestErrorsNameOperationAndKeyNeverTheToken points a storage with a token
// at a Consul that does not answer.
func TestErrorsNameOperationAndKeyNeverTheToken(t *testing.T) {
	const token = "s3cret-token-value"
	s := newStorage(t, &ConsulKV{Consul: &consul.Config{Address: "127.0.0.1:1", Token: token}})
	ctx := context.Background()
	_, errLoad := s.Load(ctx, "certs/x")
	errStore := s.Store(ctx, "certs/x", []byte("v"))
	errLock := s.Lock(ctx, "issue_cert_x")
	for op, err := range map[string]error{"load": errLoad, "store": errStore, "lock": errLock} {
		if err == nil || !strings.HasPrefix(err.Error(), "consul_kv: "+op+` "`) || strings.Contains(err.Error(), token) {
			t.Errorf("%s: %v, want an error naming the operation and key, without the token", op, err)
		}
	}
}

// keyFile writes a new random AES-256 key, base64-encoded.
func keyFile(t testing.TB) string {
	file := filepath.Join(t.TempDir(), "kv.key")
	key := make([]byte, 32)
	rand.Read(key)
	if err := os.WriteFile(file, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

var _ certmagic.Storage = (*ConsulKV)(nil)
