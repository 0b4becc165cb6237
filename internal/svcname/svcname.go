// Package svcname is the one rule caddymesh applies to a Consul service
// name, wherever the name comes from: a config (a fixed service, an
// intentions destination, a registration's name and ID), Consul's catalog,
// or a request. Consul itself accepts almost any name (it only warns about
// names that are not DNS labels); the rule keeps those that are safe as a
// path segment of Consul's API and in a query string, go-micro's dotted
// names (go.micro.api.greeter) among them.
package svcname

// MaxLen is the longest name accepted, in bytes: Consul's limit for a
// service identity.
const MaxLen = 256

// Rule says what a valid name is, for error messages.
const Rule = "a service name is letters, digits, '-', '_' and '.', with no empty label between dots, at most 256 bytes"

// Valid reports whether name follows the rule: 1 to MaxLen bytes of ASCII
// letters, digits, '-', '_' and '.', where '.' separates non-empty labels
// (so neither "." nor ".." nor a leading, trailing or doubled dot).
func Valid(name string) bool {
	if len(name) == 0 || len(name) > MaxLen {
		return false
	}
	for i := 0; i < len(name); i++ {
		switch c := name[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_':
		case c == '.' && i > 0 && i < len(name)-1 && name[i-1] != '.':
		default:
			return false
		}
	}
	return true
}
