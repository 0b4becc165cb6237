package discovery

import "github.com/caddymesh/caddymesh/internal/consul"

// ConsulConfig says how to reach Consul: the consul block of the mesh app
// and of every module that queries Consul. See consul.Config for its
// fields and their precedence.
type ConsulConfig = consul.Config

// ConsulTLS configures TLS to Consul's HTTPS API. See consul.TLS.
type ConsulTLS = consul.TLS
