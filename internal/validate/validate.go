// Package validate runs a module's validation once.
//
// Caddy calls a module's Validate after its Provision, but caddymesh's
// modules act on their configuration while they provision: they query
// Consul for the services it names, take shared watches and estimates
// keyed by it, size queues by it. So each module has one public Validate, which its
// Provision calls before acting on anything, and which keeps its answer
// in a [Once]: Caddy's own call after Provision, and any later one, get
// that answer without the checks running again.
package validate

// Once is the answer of a module instance's validation. Its zero value has
// no answer yet. It is not for concurrent use: Caddy provisions and
// validates a module on one goroutine.
type Once struct {
	done bool
	err  error
}

// Do returns the answer of check, which it runs the first time only.
func (o *Once) Do(check func() error) error {
	if !o.done {
		o.done, o.err = true, check()
	}
	return o.err
}
