// Module pebble pins Pebble, Let's Encrypt's ACME test server, which
// caddymesh's tests use as the CA for automatic HTTPS. It is a module of
// its own so that its dependencies stay out of caddymesh's go.mod.
module github.com/caddymesh/caddymesh/internal/tools/pebble

go 1.26

tool github.com/letsencrypt/pebble/v2/cmd/pebble

require (
	github.com/go-jose/go-jose/v4 v4.1.0 // indirect
	github.com/letsencrypt/challtestsrv v1.3.2 // indirect
	github.com/letsencrypt/pebble/v2 v2.8.0 // indirect
	github.com/miekg/dns v1.1.62 // indirect
	golang.org/x/mod v0.24.0 // indirect
	golang.org/x/net v0.40.0 // indirect
	golang.org/x/sync v0.14.0 // indirect
	golang.org/x/sys v0.33.0 // indirect
	golang.org/x/tools v0.33.0 // indirect
)
