// Package middleware holds the HTTP handlers a mesh sidecar needs in front
// of the service it fronts: mesh_identity (who is calling, and may they),
// mesh_breaker (stop calling what fails) and mesh_limit (traffic shaping).
package middleware

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"slices"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"golang.org/x/net/http/httpguts"

	"github.com/caddymesh/caddymesh/internal/boxed"
	"github.com/caddymesh/caddymesh/internal/meshapp"
	"github.com/caddymesh/caddymesh/internal/spiffe"
	"github.com/caddymesh/caddymesh/internal/urlpath"
	"github.com/caddymesh/caddymesh/internal/validate"
)

func init() {
	caddy.RegisterModule(new(Identity))
}

// Variables mesh_identity sets on requests it lets through.
const (
	// CallerVar holds the calling service's name: {http.vars.mesh_caller}.
	CallerVar = "mesh_caller"
	// CallerIDVar holds the caller's SPIFFE ID, when it came from a
	// certificate: {http.vars.mesh_caller_id}.
	CallerIDVar = "mesh_caller_id"
)

// Identity establishes which service is calling, and decides whether it
// may: from the SPIFFE ID of a verified client certificate, or from a
// request header sent by a trusted network. Explicit deny wins, then
// allow; with intentions, Consul's service intentions decide the rest, on
// the request's normalized path (see the mesh app's
// path_with_escaped_slashes_action), which is the path passed on.
//
// A request without a valid identity is answered 401, one not allowed 403,
// with a short JSON body naming the reason ({"error": "caller denied",
// "caller": "web"}), and logged with the caller. When the server has
// handle_errors routes, the refusal goes to them instead, as a Caddy HTTP
// error whose message is the reason. A request let through carries the
// caller in {http.vars.mesh_caller}, to pass upstream with header_up or to
// log.
type Identity struct {
	// Where a caller's identity comes from, tried in order.
	From []IdentitySource `json:"from,omitempty"`

	// Callers allowed: service names, or * for any caller with an identity.
	// With neither allow nor intentions, any caller with an identity is
	// allowed.
	Allow []string `json:"allow,omitempty"`

	// Callers denied, whatever else says: service names, or *.
	Deny []string `json:"deny,omitempty"`

	// The trust domains whose SPIFFE IDs "mtls" accepts, such as Consul's
	// <cluster-id>.consul. Default, with Consul intentions: the trust
	// domain of Consul's Connect roots (/v1/agent/connect/ca/roots).
	// Required for "mtls" otherwise. Whatever this says, a client
	// certificate verified by Consul's Connect roots (trust_pool connect)
	// may only claim the trust domain of those roots.
	TrustDomains []string `json:"trust_domains,omitempty"`

	// Decide, for callers neither allowed nor denied above, with a
	// service's intentions: a module of the mesh.intentions namespace,
	// such as {"source": "consul", "destination": "api"}.
	IntentionsRaw json.RawMessage `json:"intentions,omitempty" caddy:"namespace=mesh.intentions inline_key=source"`

	intentions  IntentionSource
	trustDomain func() string // the trust domain of the intentions' mesh, without TrustDomains
	slashes     urlpath.EscapedSlashes
	names       boxed.Strings
	logger      *zap.Logger
	validated   validate.Once // Validate's answer, for Caddy's call after Provision
}

// IdentitySource is one place a caller's identity may come from.
type IdentitySource struct {
	// "mtls": the SPIFFE ID of the client certificate, which Caddy's
	// `tls { client_auth }` must have verified: its one URI SAN, a Consul
	// service identity, spiffe://<trust-domain>[/ap/<partition>]/ns/<namespace>/dc/<datacenter>/svc/<service>,
	// of a trust domain in TrustDomains. "header": a request header,
	// trusted only from the networks in Trusted.
	Source string `json:"source,omitempty"`

	// For "header": the request header that names the calling service, a
	// valid service name. A request with several is answered 401. The
	// header is removed from every request before it goes on.
	Header string `json:"header,omitempty"`

	// For "header": the networks (CIDR) of peers allowed to send the
	// header. A request from elsewhere that carries it, even empty, is
	// answered 403.
	Trusted []string `json:"trusted,omitempty"`

	trusted []netip.Prefix
}

// IntentionSource decides, from intentions it keeps current and without
// I/O, whether a caller may make a request, whose path mesh_identity has
// normalized. Namespace and partition are empty for the defaults.
type IntentionSource interface {
	Allows(r *http.Request, service, namespace, partition string) bool
}

// TrustDomainSource is an IntentionSource that knows the trust domain of
// its mesh's identities: "" until it does.
type TrustDomainSource interface {
	TrustDomain() string
}

// CaddyModule returns the Caddy module information.
func (*Identity) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.mesh_identity",
		New: func() caddy.Module { return new(Identity) },
	}
}

// Provision parses the trusted networks and loads the intentions source.
func (id *Identity) Provision(ctx caddy.Context) error {
	id.logger = ctx.Logger()
	if err := id.Validate(); err != nil {
		return err
	}
	var err error
	if id.slashes, err = meshapp.EscapedSlashes(ctx); err != nil {
		return fmt.Errorf("mesh_identity: %w", err)
	}
	for i := range id.From {
		src := &id.From[i]
		for _, cidr := range src.Trusted {
			prefix, err := netip.ParsePrefix(cidr)
			if err != nil {
				return fmt.Errorf("mesh_identity: trusted %q: %v", cidr, err)
			}
			src.trusted = append(src.trusted, prefix)
		}
		src.Header = http.CanonicalHeaderKey(src.Header)
	}
	if id.IntentionsRaw != nil {
		mod, err := ctx.LoadModule(id, "IntentionsRaw")
		if err != nil {
			return fmt.Errorf("mesh_identity: loading intentions: %v", err)
		}
		source, ok := mod.(IntentionSource)
		if !ok {
			return fmt.Errorf("mesh_identity: intentions module %T cannot decide", mod)
		}
		id.intentions = source
	}
	return id.provisionTrustDomain()
}

// provisionTrustDomain takes the trust domain of mtls identities from the
// intentions source, when none is configured.
func (id *Identity) provisionTrustDomain() error {
	if !id.usesMTLS() || len(id.TrustDomains) > 0 {
		return nil
	}
	source, ok := id.intentions.(TrustDomainSource)
	if !ok {
		return fmt.Errorf("mesh_identity: from mtls: trust_domain is required: the intentions source (%T) does not say it", id.intentions)
	}
	id.trustDomain = source.TrustDomain
	return nil
}

func (id *Identity) usesMTLS() bool {
	return slices.ContainsFunc(id.From, func(src IdentitySource) bool { return src.Source == "mtls" })
}

// Validate rejects bad values, naming the field and the value.
// Provision calls it before acting on them; its checks run once.
func (id *Identity) Validate() error { return id.validated.Do(id.check) }

// check makes Validate's checks.
func (id *Identity) check() error {
	if len(id.From) == 0 {
		return errors.New("mesh_identity: from: at least one source of identity is required")
	}
	for _, src := range id.From {
		switch {
		case src.Source == "mtls" && (src.Header != "" || len(src.Trusted) > 0):
			return errors.New("mesh_identity: from mtls takes no header or trusted networks")
		case src.Source == "header" && (src.Header == "" || len(src.Trusted) == 0):
			return fmt.Errorf("mesh_identity: from header %q: a header name and trusted networks are required", src.Header)
		case src.Source != "mtls" && src.Source != "header":
			return fmt.Errorf("mesh_identity: from %q: must be mtls or header", src.Source)
		case src.Source == "header" && !httpguts.ValidHeaderFieldName(src.Header):
			return fmt.Errorf("mesh_identity: from header %q: not a valid header name", src.Header)
		}
		for _, cidr := range src.Trusted {
			if _, err := netip.ParsePrefix(cidr); err != nil {
				return fmt.Errorf("mesh_identity: trusted %q: %v", cidr, err)
			}
		}
	}
	if id.usesMTLS() && len(id.TrustDomains) == 0 && id.IntentionsRaw == nil {
		return errors.New("mesh_identity: from mtls: trust_domain is required, unless Consul intentions say it")
	}
	for _, domain := range id.TrustDomains {
		if !spiffe.ValidTrustDomain(domain) {
			return fmt.Errorf("mesh_identity: trust_domain %q: must be a SPIFFE trust domain name (lower-case letters, digits, '.', '-' and '_')", domain)
		}
	}
	for field, names := range map[string][]string{"allow": id.Allow, "deny": id.Deny} {
		if slices.Contains(names, "") {
			return fmt.Errorf(`mesh_identity: %s "": an empty name is no caller`, field)
		}
	}
	return nil
}

// caller is who is calling.
type caller struct {
	service, namespace, partition, spiffeID string
}

// ServeHTTP normalizes the request's path, then lets through callers
// that may call, and answers the others.
func (id *Identity) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if status, err := urlpath.NormalizeRequest(w.Header(), r, id.slashes); err != nil {
		return caddyhttp.Error(status, err)
	}
	who, status, reason := id.identify(r)
	id.removeIdentityHeaders(r)
	if status == 0 {
		status, reason = id.authorize(r, who)
	}
	if status != 0 {
		return id.refuse(w, r, status, reason, who)
	}
	caddyhttp.SetVar(r.Context(), CallerVar, id.names.Box(who.service))
	if who.spiffeID != "" {
		caddyhttp.SetVar(r.Context(), CallerIDVar, id.names.Box(who.spiffeID))
	}
	return next.ServeHTTP(w, r)
}

// identify finds the caller, or the status and reason to refuse with. A
// peer not trusted to send an identity header that sends one is refused,
// whatever the other sources say.
func (id *Identity) identify(r *http.Request) (caller, int, string) {
	for i := range id.From {
		src := &id.From[i]
		if values := r.Header[src.Header]; src.Source == "header" && len(values) > 0 && !src.trusts(r.RemoteAddr) {
			return caller{service: values[0]}, http.StatusForbidden, "identity header from an untrusted peer"
		}
	}
	for i := range id.From {
		src := &id.From[i]
		var who caller
		var reason string
		var found bool
		switch src.Source {
		case "mtls":
			who, reason, found = id.fromCertificate(r)
		case "header":
			who, reason, found = src.fromHeader(r)
		}
		if found && reason != "" {
			return who, http.StatusUnauthorized, reason
		}
		if found {
			return who, 0, ""
		}
	}
	return caller{}, http.StatusUnauthorized, "no caller identity"
}

// removeIdentityHeaders removes the identity headers from r: the
// application learns the caller only from mesh_identity's variables.
func (id *Identity) removeIdentityHeaders(r *http.Request) {
	for i := range id.From {
		if id.From[i].Source == "header" {
			delete(r.Header, id.From[i].Header)
		}
	}
}

// authorize decides whether who may make request r: 0, or the status and
// reason to refuse with.
func (id *Identity) authorize(r *http.Request, who caller) (int, string) {
	switch {
	case matchesAny(id.Deny, who.service):
		return http.StatusForbidden, "caller denied"
	case matchesAny(id.Allow, who.service):
		return 0, ""
	case id.intentions != nil:
		if id.intentions.Allows(r, who.service, who.namespace, who.partition) {
			return 0, ""
		}
		return http.StatusForbidden, "caller denied by intentions"
	case len(id.Allow) > 0:
		return http.StatusForbidden, "caller not allowed"
	}
	return 0, ""
}

func matchesAny(services []string, service string) bool {
	return slices.ContainsFunc(services, func(s string) bool { return s == "*" || s == service })
}

// refuse logs a refused request with the caller and answers it: with the
// JSON body, or, when the server has handle_errors routes to write the
// answer, as a Caddy HTTP error (Caddy alone would send an empty body).
func (id *Identity) refuse(w http.ResponseWriter, r *http.Request, status int, reason string, who caller) error {
	id.logger.Info("request refused",
		zap.Int("status", status), zap.String("reason", reason),
		zap.String("caller", who.service), zap.String("caller_id", who.spiffeID),
		zap.String("remote", r.RemoteAddr), zap.String("uri", r.RequestURI))
	if hasErrorRoutes(r) {
		return caddyhttp.Error(status, errors.New(reason))
	}
	body, err := json.Marshal(refusal{Error: reason, Caller: who.service})
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, err = w.Write(append(body, '\n'))
	return err
}

// refusal is the JSON body of a refused request.
type refusal struct {
	Error  string `json:"error"`
	Caller string `json:"caller,omitempty"`
}

// hasErrorRoutes reports whether r's server handles errors with routes of
// its own (handle_errors).
func hasErrorRoutes(r *http.Request) bool {
	srv, ok := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	return ok && srv != nil && srv.Errors != nil && len(srv.Errors.Routes) > 0
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Identity)(nil)
	_ caddy.Validator             = (*Identity)(nil)
	_ caddyhttp.MiddlewareHandler = (*Identity)(nil)
)
