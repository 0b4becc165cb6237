package connect

import "crypto/tls"

// EnableSessionResumption lets t resume TLS sessions, for the handshake
// benchmark's resumed figure only: caddymesh never does, since Consul's
// built-in proxy skips its intention check on resumed sessions.
func EnableSessionResumption(t *Transport) {
	t.base.ClientSessionCache = tls.NewLRUClientSessionCache(64)
}

// LeafWatchOf returns the running leaf watch of service, or nil.
func LeafWatchOf(service string) any {
	for _, w := range allLeafWatches() {
		if w.key.Service == service {
			return w
		}
	}
	return nil
}
