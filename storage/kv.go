package storage

import (
	"context"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/hashicorp/consul/api"
)

// maxValueSize is the largest value Consul's KV store takes by default
// (its kv_max_value_size, 512 KiB).
const maxValueSize = 512 << 10

// Store puts value at key, sealed when the storage has a key.
func (s *ConsulKV) Store(ctx context.Context, key string, value []byte) error {
	sealed := s.seal(key, value)
	if len(sealed) > maxValueSize {
		return opError("store", key, fmt.Errorf("value of %d bytes (%d stored) is over Consul's limit of %d bytes for a KV value", len(value), len(sealed), maxValueSize))
	}
	pair := &api.KVPair{Key: s.kvKey(key), Value: sealed, Flags: uint64(time.Now().UnixNano())}
	if _, err := s.client.KV().Put(pair, write(ctx)); err != nil {
		return opError("store", key, err)
	}
	return nil
}

// Load returns the value at key, or fs.ErrNotExist.
func (s *ConsulKV) Load(ctx context.Context, key string) ([]byte, error) {
	pair, _, err := s.client.KV().Get(s.kvKey(key), query(ctx))
	if err != nil {
		return nil, opError("load", key, err)
	}
	if pair == nil {
		return nil, opError("load", key, fs.ErrNotExist)
	}
	value, err := s.open(key, pair.Value)
	if err != nil {
		return nil, opError("load", key, err)
	}
	return value, nil
}

// Delete deletes key and, when key is a directory, every key under it, in
// one transaction. A missing key is no error.
func (s *ConsulKV) Delete(ctx context.Context, key string) error {
	kvKey := s.kvKey(key)
	ops := api.KVTxnOps{
		{Verb: api.KVDelete, Key: kvKey},
		{Verb: api.KVDeleteTree, Key: kvKey + "/"},
	}
	ok, resp, _, err := s.client.KV().Txn(ops, query(ctx))
	if err != nil {
		return opError("delete", key, err)
	}
	if !ok {
		return opError("delete", key, fmt.Errorf("transaction refused: %v", resp.Errors))
	}
	return nil
}

// Exists reports whether key is a value or a directory of values.
func (s *ConsulKV) Exists(ctx context.Context, key string) bool {
	_, err := s.Stat(ctx, key)
	return err == nil
}

// Stat describes key: a value (IsTerminal, with its size and the time it
// was stored) or a directory, the prefix of other keys.
func (s *ConsulKV) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	pair, _, err := s.client.KV().Get(s.kvKey(key), query(ctx))
	if err != nil {
		return certmagic.KeyInfo{}, opError("stat", key, err)
	}
	if pair != nil {
		return certmagic.KeyInfo{
			Key:        key,
			Modified:   modified(pair),
			Size:       int64(len(pair.Value) - s.overhead()),
			IsTerminal: true,
		}, nil
	}
	children, err := s.children(ctx, key, "/")
	if err != nil {
		return certmagic.KeyInfo{}, opError("stat", key, err)
	}
	if len(children) == 0 {
		return certmagic.KeyInfo{}, opError("stat", key, fs.ErrNotExist)
	}
	return certmagic.KeyInfo{Key: key}, nil
}

// List returns the keys under dir, sorted: its values and directories, or,
// when recursive, every value and directory beneath it, as FileStorage
// walks a directory tree. A dir with nothing under it is fs.ErrNotExist.
func (s *ConsulKV) List(ctx context.Context, dir string, recursive bool) ([]string, error) {
	separator := "/"
	if recursive {
		separator = ""
	}
	children, err := s.children(ctx, dir, separator)
	if err != nil {
		return nil, opError("list", dir, err)
	}
	if len(children) == 0 {
		return nil, opError("list", dir, fs.ErrNotExist)
	}
	base := strings.Trim(dir, "/")
	var keys []string
	for _, child := range children {
		key := strings.TrimSuffix(s.storageKey(child), "/")
		keys = append(keys, key)
		// Directories between dir and a value deep under it.
		for parent := pathDir(key); recursive && parent != base && parent != ""; parent = pathDir(parent) {
			keys = append(keys, parent)
		}
	}
	slices.Sort(keys)
	return slices.Compact(keys), nil
}

// children returns the Consul keys under storage directory dir: every key
// beneath it with no separator, or its direct children (directories ending
// with "/") with separator "/".
func (s *ConsulKV) children(ctx context.Context, dir, separator string) ([]string, error) {
	keys, _, err := s.client.KV().Keys(s.kvKey(dir)+"/", separator, query(ctx))
	return keys, err
}

// pathDir is the directory of key, "" at the top.
func pathDir(key string) string {
	i := strings.LastIndexByte(key, '/')
	if i < 0 {
		return ""
	}
	return key[:i]
}
