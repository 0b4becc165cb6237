package gateway

import (
	"cmp"
	"errors"
	"fmt"
	"net/http"
	"path"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddymesh/caddymesh/internal/consul"
	"github.com/caddymesh/caddymesh/internal/meshapp"
	"github.com/caddymesh/caddymesh/internal/reqkey"
	"github.com/caddymesh/caddymesh/internal/svcname"
	"github.com/caddymesh/caddymesh/internal/urlpath"
	"github.com/caddymesh/caddymesh/internal/validate"
)

func init() {
	caddy.RegisterModule(new(MeshService))
}

// ServiceVar holds the service mesh_service found for a request:
// {http.vars.mesh_service}.
const ServiceVar = "mesh_service"

// MeshService names, from each request, the Consul service it is
// for, as an API gateway routing /<service>/... does (with a namespace, as
// go-micro's does: /greeter/... goes to go.micro.api.greeter), and answers
// 404 to a request for a service that may not be reached: one whose name
// breaks the service-name rule (package svcname), matches no
// allow_services pattern and lacks require_tag, or that Consul does not
// know. It asks Consul nothing per
// request: it reads a watch of the catalog (names and tags), shared by
// every handler on the same Consul. A request let through carries the
// service in {http.vars.mesh_service}, for `dynamic consul
// {http.vars.mesh_service}`. The name is read once the request's path is
// normalized (see the mesh app's path_with_escaped_slashes_action), and
// the normalized path goes on.
type MeshService struct {
	// Where the name is in the request: a placeholder expression, such as
	// {http.request.uri.path.0} or {http.request.host.labels.2}. Required.
	Service string `json:"service,omitempty"`

	// Prefix of the services' names in Consul, as go-micro's --namespace:
	// the name taken from the request is looked up as <namespace>.<name>.
	// Not a Consul Enterprise namespace (see consul). Default: none.
	Namespace string `json:"namespace,omitempty"`

	// Services that may be reached, as patterns (path.Match syntax, such
	// as "shop-*"), matched against the full name, namespace included.
	// Consul's own service, consul, is reached only when listed by that
	// exact name.
	AllowServices []string `json:"allow_services,omitempty"`

	// Services carrying this tag in Consul may be reached too.
	RequireTag string `json:"require_tag,omitempty"`

	// Remove /<service> from the front of the path: /greeter/hello goes
	// to greeter as /hello.
	StripPath bool `json:"strip_path,omitempty"`

	// Connection settings overriding the mesh app's, field by field.
	Consul *consul.Config `json:"consul,omitempty"`

	name       reqkey.Func
	slashes    urlpath.EscapedSlashes // how paths are normalized
	catalogKey consul.CatalogKey
	catalog    *consul.CatalogWatch
	reachable  atomic.Pointer[reachableServices]
	validated  validate.Once // Validate's answer, for Caddy's call after Provision
}

// reachableServices are the services of a catalog answer that the handler
// lets requests reach: by the name a request gives (without the
// namespace), the full name, boxed once for the request's variables.
type reachableServices struct {
	catalog *map[string][]string // the answer they were found in
	names   map[string]any
}

var (
	errNoSuchService  = errors.New("no such service")
	errCatalogPending = errors.New("consul's catalog has not been read yet")
)

// CaddyModule returns the Caddy module information.
func (*MeshService) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.mesh_service",
		New: func() caddy.Module { return new(MeshService) },
	}
}

// Provision takes the shared catalog watch.
func (s *MeshService) Provision(ctx caddy.Context) error {
	if err := s.Validate(); err != nil {
		return err
	}
	s.name = reqkey.Compile(s.Service)
	conn, slashes, err := provisionGateway(ctx, s.Consul)
	if err != nil {
		return err
	}
	s.slashes = slashes
	s.catalogKey = consul.CatalogKey{Endpoint: conn.Endpoint, Datacenter: conn.Datacenter}
	s.catalog, err = consul.TakeCatalog(s.catalogKey, conn)
	return err
}

// provisionGateway is the preamble of the gateway's handlers: their Consul
// connection (consul.Provision) and how the mesh app normalizes paths.
func provisionGateway(ctx caddy.Context, own *consul.Config) (consul.Connection, urlpath.EscapedSlashes, error) {
	slashes, err := meshapp.EscapedSlashes(ctx)
	if err != nil {
		return consul.Connection{}, 0, err
	}
	conn, err := consul.Provision(ctx, own)
	return conn, slashes, err
}

// Validate rejects bad values, naming the field and the value.
// Provision calls it before acting on them; its checks run once.
func (s *MeshService) Validate() error { return s.validated.Do(s.check) }

// check makes Validate's checks.
func (s *MeshService) check() error {
	switch {
	case !reqkey.HasPlaceholders(s.Service):
		return fmt.Errorf("mesh_service: service %q: must take the name from the request with a placeholder, such as {http.request.uri.path.0}", s.Service)
	case len(s.AllowServices) == 0 && s.RequireTag == "":
		return errors.New("mesh_service: allow_services or require_tag is required: which services may be reached?")
	case s.Namespace != "" && !svcname.Valid(s.Namespace+".x"):
		return fmt.Errorf("mesh_service: namespace %q: must be the start of a service name (%s)", s.Namespace, svcname.Rule)
	}
	for _, pattern := range s.AllowServices {
		if _, err := path.Match(pattern, ""); err != nil {
			return fmt.Errorf("mesh_service: allow_services %q: %v", pattern, err)
		}
	}
	return nil
}

// Cleanup lets go of the catalog watch.
func (s *MeshService) Cleanup() error {
	if s.catalog == nil {
		return nil
	}
	consul.Catalogs.Release(s.catalogKey)
	return nil
}

// ServeHTTP lets through requests for services that may be reached,
// taking the name from the request once its path is normalized.
func (s *MeshService) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if status, err := urlpath.NormalizeRequest(w.Header(), r, s.slashes); err != nil {
		return caddyhttp.Error(status, err)
	}
	reachable := s.reachableServices()
	if reachable == nil {
		w.Header().Set("Retry-After", "1")
		return caddyhttp.Error(http.StatusServiceUnavailable, errCatalogPending)
	}
	name := s.name(r)
	boxedName, ok := reachable[name]
	if !ok {
		return caddyhttp.Error(http.StatusNotFound, errNoSuchService)
	}
	caddyhttp.SetVar(r.Context(), ServiceVar, boxedName)
	if s.StripPath {
		stripService(r, name)
	}
	return next.ServeHTTP(w, r)
}

// reachableServices returns the services requests may reach, worked out
// once per catalog answer; nil until Consul first answers.
func (s *MeshService) reachableServices() map[string]any {
	services := s.catalog.Services()
	if services == nil {
		return nil
	}
	if r := s.reachable.Load(); r != nil && r.catalog == services {
		return r.names
	}
	names := make(map[string]any)
	for name, tags := range *services {
		asked, inNamespace := strings.CutPrefix(name, s.Namespace)
		if s.Namespace != "" {
			asked, inNamespace = strings.CutPrefix(asked, ".")
		}
		if inNamespace && svcname.Valid(name) && s.allows(name, tags) {
			names[asked] = name
		}
	}
	s.reachable.Store(&reachableServices{catalog: services, names: names})
	return names
}

// consulService is Consul's own service: its servers' RPC port.
const consulService = "consul"

// allows reports whether the service, carrying tags, may be reached.
// Consul's own service may be reached only when allowed by its exact
// name, never by a pattern or a tag.
func (s *MeshService) allows(name string, tags []string) bool {
	if name == consulService {
		return slices.Contains(s.AllowServices, consulService)
	}
	if s.RequireTag != "" && slices.Contains(tags, s.RequireTag) {
		return true
	}
	return slices.ContainsFunc(s.AllowServices, func(pattern string) bool {
		matched, _ := path.Match(pattern, name)
		return matched
	})
}

// stripService removes /<name> from the front of r's path, when it is
// there as a whole segment. A valid service name needs no escaping, so
// the escaped path, when there is one, begins the same way.
func stripService(r *http.Request, name string) {
	rest, ok := cutSegment(r.URL.Path, name)
	if !ok {
		return
	}
	r.URL.Path = rest
	if r.URL.RawPath != "" {
		r.URL.RawPath, _ = cutSegment(r.URL.RawPath, name)
	}
}

// cutSegment returns path without its first segment, when that is name,
// starting with a slash.
func cutSegment(path, name string) (string, bool) {
	rest, ok := strings.CutPrefix(strings.TrimPrefix(path, "/"), name)
	if !ok || len(path) == 0 || path[0] != '/' || (rest != "" && rest[0] != '/') {
		return path, false
	}
	return cmp.Or(rest, "/"), true
}

// Interface guards
var (
	_ caddy.Provisioner           = (*MeshService)(nil)
	_ caddy.Validator             = (*MeshService)(nil)
	_ caddy.CleanerUpper          = (*MeshService)(nil)
	_ caddyhttp.MiddlewareHandler = (*MeshService)(nil)
)
