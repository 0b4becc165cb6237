package storage

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strings"
)

// loadAEAD reads a base64-encoded 256-bit key from file and returns
// AES-256-GCM with it. Errors name the file, never its content.
func loadAEAD(file string) (cipher.AEAD, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("consul_kv: reading aes_key_file %q: %w", file, err)
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(data)))
	if err != nil || len(key) != 32 {
		return nil, fmt.Errorf("consul_kv: aes_key_file %q must hold 32 bytes in base64 (openssl rand -base64 32)", file)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("consul_kv: aes_key_file %q: %w", file, err)
	}
	return cipher.NewGCM(block)
}

// seal encrypts value for key, when the storage has a key: a random nonce,
// then the ciphertext and its tag, with key as additional data so that a
// value moved to another key does not open.
func (s *ConsulKV) seal(key string, value []byte) []byte {
	if s.aead == nil {
		return value
	}
	nonce := make([]byte, s.aead.NonceSize(), s.overhead()+len(value))
	_, _ = rand.Read(nonce) // crypto/rand.Read never fails
	return s.aead.Seal(nonce, nonce, value, []byte(key))
}

// open decrypts what seal made for key.
func (s *ConsulKV) open(key string, sealed []byte) ([]byte, error) {
	if s.aead == nil {
		return sealed, nil
	}
	n := s.aead.NonceSize()
	if len(sealed) < s.overhead() {
		return nil, errors.New("value too short to be sealed: is it encrypted with aes_key_file?")
	}
	value, err := s.aead.Open(nil, sealed[:n], sealed[n:], []byte(key))
	if err != nil {
		return nil, errors.New("value does not open with aes_key_file's key")
	}
	return value, nil
}

// overhead is how many bytes sealing adds to a value.
func (s *ConsulKV) overhead() int {
	if s.aead == nil {
		return 0
	}
	return s.aead.NonceSize() + s.aead.Overhead()
}
