package discovery

import (
	"cmp"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"

	"github.com/caddymesh/caddymesh/internal/args"
	"github.com/caddymesh/caddymesh/internal/consul"
	"github.com/caddymesh/caddymesh/internal/svcname"
)

func init() {
	caddy.RegisterModule(new(ConsulIntentions))
}

// intentionWatches holds one intentions watch per Consul endpoint and
// destination, shared like the health watchers.
var intentionWatches = consul.NewRegistry[intentionsKey, *intentionsWatch]()

// intentionsKey is what makes two intentions watches differ.
type intentionsKey struct {
	consul.Endpoint
	destination string
}

// ConsulIntentions decides, as Consul's service intentions for a
// destination say, whether a caller may make a request. The intentions are
// kept current by a blocking query and evaluated locally with Consul's
// rules: the first intention, by precedence, whose source matches the
// caller decides (exact names before wildcards); an L7 intention's first
// matching permission decides; otherwise, the default. Permissions that
// require a JWT deny, since caddymesh does not verify JWTs (a JWT
// requirement on a whole service-intentions entry is not seen: Consul's
// intention match API does not return it). Until Consul first answers,
// every caller is denied. It is the intentions source of mesh_identity.
//
// The default is the one Consul's own sidecars use: the local agent's
// default_intention_policy, else its ACL default policy. Reading the
// former (/v1/agent/self, with the configured token) takes agent:read;
// without it, the ACL default policy that every Consul answer carries
// decides, unless Default says otherwise, and a warning says so once.
//
// It also tells mesh_identity the trust domain of Consul's Connect roots
// (/v1/agent/connect/ca/roots), the only one whose SPIFFE IDs it accepts
// unless told others.
type ConsulIntentions struct {
	// The service whose intentions apply; it follows the service-name rule.
	// Default: the service the mesh app registers, when it registers
	// exactly one.
	Destination string `json:"destination,omitempty"`

	// The decision, allow or deny, for callers no intention decides.
	// Default: Consul's.
	Default string `json:"default,omitempty"`

	// Connection settings overriding the mesh app's, field by field.
	Consul *ConsulConfig `json:"consul,omitempty"`

	key   intentionsKey
	watch *intentionsWatch
}

// CaddyModule returns the Caddy module information.
func (*ConsulIntentions) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "mesh.intentions.consul",
		New: func() caddy.Module { return new(ConsulIntentions) },
	}
}

// Provision takes the shared watch of the destination's intentions and
// waits briefly for Consul's first answer.
func (ci *ConsulIntentions) Provision(ctx caddy.Context) error {
	if err := ci.validate(); err != nil {
		return err
	}
	app, err := meshApp(ctx)
	if err != nil {
		return err
	}
	if ci.Destination == "" {
		if app == nil || len(app.Register) != 1 {
			return errors.New("mesh intentions: destination is required unless the mesh app registers exactly one service")
		}
		ci.Destination = app.Register[0].Name
	}
	conn, err := consul.Provision(ctx, ci.Consul)
	if err != nil {
		return err
	}
	ci.key = intentionsKey{Endpoint: conn.Endpoint, destination: ci.Destination}
	ci.watch, err = intentionWatches.Take(ci.key, func() (*intentionsWatch, error) {
		return startIntentionsWatch(ci.Destination, conn)
	})
	if err != nil {
		return err
	}
	consul.AwaitFirstTries(ctx, firstAnswerTimeout, ci.watch)
	return nil
}

func (ci *ConsulIntentions) validate() error {
	if ci.Default != "" && ci.Default != "allow" && ci.Default != "deny" {
		return fmt.Errorf("mesh intentions: default %q: must be allow or deny", ci.Default)
	}
	if ci.Destination != "" && !svcname.Valid(ci.Destination) {
		return fmt.Errorf("mesh intentions: destination %q: %s", ci.Destination, svcname.Rule)
	}
	return nil
}

// Cleanup lets go of the watch; the last user stops it.
func (ci *ConsulIntentions) Cleanup() error {
	if ci.watch == nil {
		return nil
	}
	intentionWatches.Release(ci.key)
	return nil
}

// Allows reports whether the intentions let caller (a service of a
// namespace and partition, empty for the defaults) make request r.
func (ci *ConsulIntentions) Allows(r *http.Request, service, namespace, partition string) bool {
	rules := ci.watch.rules.Load()
	if rules == nil {
		return false
	}
	defaultAllow := rules.defaultAllow
	if ci.Default != "" {
		defaultAllow = ci.Default == "allow"
	}
	return rules.allows(r, service, namespace, partition, defaultAllow)
}

// TrustDomain returns the trust domain of Consul's Connect roots, "" until
// Consul has said it.
func (ci *ConsulIntentions) TrustDomain() string {
	if domain := ci.watch.trustDomain.Load(); domain != nil {
		return *domain
	}
	return ""
}

// UnmarshalCaddyfile sets up the source from the intentions option of
// mesh_identity. Syntax:
//
//	intentions [<destination>] {
//	    default allow|deny
//	    consul { ... }
//	}
func (ci *ConsulIntentions) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the option's name
	if err := args.Optional(d, &ci.Destination); err != nil {
		return err
	}
	block := args.NewBlock()
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if err := block.Check(d); err != nil {
			return err
		}
		switch d.Val() {
		case "default":
			if err := args.String(d, &ci.Default); err != nil {
				return err
			}
		case "consul":
			ci.Consul = new(ConsulConfig)
			if err := ci.Consul.UnmarshalCaddyfile(d); err != nil {
				return err
			}
		default:
			return d.Errf("unrecognized intentions option '%s'", d.Val())
		}
	}
	if err := ci.validate(); err != nil {
		return d.Err(err.Error())
	}
	return nil
}

// intentionsWatch keeps a destination's intentions current.
type intentionsWatch struct {
	*consul.Poller[intentionsAnswer]
	destination string
	rules       atomic.Pointer[intentionRules]
	// trustDomain is the trust domain of Consul's Connect roots, once
	// read.
	trustDomain atomic.Pointer[string]
	// agentDefault is the agent's default intention policy, "allow" or
	// "deny", once read; "" when the token may not read it.
	agentDefault     string
	agentDefaultRead bool
	rootsFailed      bool // reading the Connect roots failed, and was logged
}

// intentionsAnswer is what Consul says of a destination's intentions.
type intentionsAnswer struct {
	intentions   []*api.Intention // by precedence, highest first
	defaultAllow bool
}

func startIntentionsWatch(destination string, conn consul.Connection) (*intentionsWatch, error) {
	w := &intentionsWatch{destination: destination}
	p, err := consul.NewPoller(conn, consul.Querier[intentionsAnswer](w), consul.PollerOptions{Subject: destination, Datacenter: conn.Datacenter})
	if err != nil {
		return nil, err
	}
	w.Poller = p
	return w, p.Start()
}

// Wait is the blocking queries' wait.
func (w *intentionsWatch) Wait() time.Duration { return consul.DefaultWait }

// Query asks for the intentions of the destination, and, once, the
// agent's default and the trust domain.
func (w *intentionsWatch) Query(client *api.Client, q *api.QueryOptions, leader bool) (intentionsAnswer, *api.QueryMeta, error) {
	q.AllowStale = !leader
	match := &api.IntentionMatch{By: api.IntentionMatchDestination, Names: []string{w.destination}}
	found, meta, err := client.Connect().IntentionMatch(match, q)
	if err != nil {
		return intentionsAnswer{}, nil, err
	}
	once := (&api.QueryOptions{Token: q.Token, AllowStale: true}).WithContext(q.Context())
	if err := w.readAgentDefault(once, meta.DefaultACLPolicy); err != nil {
		return intentionsAnswer{}, nil, err
	}
	w.readTrustDomain(once)
	policy := cmp.Or(w.agentDefault, meta.DefaultACLPolicy)
	return intentionsAnswer{intentions: found[w.destination], defaultAllow: policy != "deny"}, meta, nil
}

// readAgentDefault reads, once, with the configured token, the local
// agent's default intention policy, as the agent itself computes it for
// its sidecars: its default_intention_policy, else its ACL default policy.
// A token without agent:read cannot: the ACL default policy of Consul's
// answers, aclDefault, decides instead, which is said once.
func (w *intentionsWatch) readAgentDefault(q *api.QueryOptions, aclDefault string) error {
	if w.agentDefaultRead {
		return nil
	}
	var self map[string]map[string]any
	_, err := w.Client().Raw().Query("/v1/agent/self", &self, q)
	var status api.StatusError
	if errors.As(err, &status) && status.Code == http.StatusForbidden {
		w.Log().Warn("the token may not read the local agent (agent:read), so its default_intention_policy is not known: "+
			"callers no intention decides get the ACL default policy instead; grant agent:read, or set the intentions' default",
			zap.String("acl_default_policy", aclDefault))
		w.agentDefaultRead = true
		return nil
	}
	if err != nil {
		return err
	}
	config := self["DebugConfig"]
	acl, _ := config["ACLResolverSettings"].(map[string]any)
	intentionPolicy, _ := config["DefaultIntentionPolicy"].(string)
	aclPolicy, _ := acl["ACLDefaultPolicy"].(string)
	w.agentDefault = cmp.Or(intentionPolicy, aclPolicy)
	w.agentDefaultRead = true
	return nil
}

// readTrustDomain reads the trust domain of Consul's Connect roots until
// it has it. Failing (Connect off, say) is logged once; intentions still
// decide for callers identified otherwise.
func (w *intentionsWatch) readTrustDomain(q *api.QueryOptions) {
	if w.trustDomain.Load() != nil {
		return
	}
	roots, _, err := w.Client().Agent().ConnectCARoots(q)
	if err == nil && roots.TrustDomain == "" {
		err = errors.New("no trust domain in Consul's answer")
	}
	if err != nil {
		if !w.rootsFailed {
			w.Log().Warn("cannot read the trust domain of Consul's Connect roots: SPIFFE IDs are refused until it is read", zap.Error(err))
			w.rootsFailed = true
		}
		return
	}
	w.trustDomain.Store(&roots.TrustDomain)
}

// Apply compiles the intentions, and says when they changed.
func (w *intentionsWatch) Apply(a intentionsAnswer) {
	previous := w.rules.Load()
	rules := compileIntentions(a, w.Log())
	w.rules.Store(rules)
	if previous == nil || !slices.Equal(previous.versions, rules.versions) || previous.defaultAllow != rules.defaultAllow {
		w.Log().Info("intentions changed", zap.Int("intentions", len(rules.intentions)), zap.Bool("default_allow", rules.defaultAllow))
	}
}

// intentionRules are a destination's intentions, ready to evaluate.
type intentionRules struct {
	intentions   []intentionRule
	defaultAllow bool
	versions     []string // each intention's ID and modify index, to tell changes
}

// intentionRule is one intention: an L4 one (allow set, no permissions)
// or an L7 one (permissions).
type intentionRule struct {
	sourceName, sourceNS, sourcePartition string
	allow                                 bool
	permissions                           []permissionRule
}

// permissionRule is one permission of an L7 intention.
type permissionRule struct {
	allow    bool
	needsJWT bool
	http     *httpMatch
}

// httpMatch is the HTTP part of a permission; every condition set must
// hold.
type httpMatch struct {
	pathExact, pathPrefix string
	pathRegex             *regexp.Regexp
	methods               []string
	headers               []headerMatch
}

type headerMatch struct {
	api.IntentionHTTPHeaderPermission
	regex *regexp.Regexp
}

// compileIntentions prepares intentions for evaluation. Intentions from
// peers and sameness groups never match a local caller and are left out; a
// permission whose regular expression does not compile never matches.
func compileIntentions(a intentionsAnswer, log *zap.Logger) *intentionRules {
	rules := &intentionRules{defaultAllow: a.defaultAllow}
	for _, ixn := range a.intentions {
		rules.versions = append(rules.versions, fmt.Sprintf("%s@%d", ixn.ID, ixn.ModifyIndex))
		if ixn.SourcePeer != "" || ixn.SourceSamenessGroup != "" || (ixn.SourceType != "" && ixn.SourceType != api.IntentionSourceConsul) {
			continue
		}
		rule := intentionRule{
			sourceName: ixn.SourceName, sourceNS: ixn.SourceNS, sourcePartition: ixn.SourcePartition,
			allow: ixn.Action == api.IntentionActionAllow,
		}
		for _, perm := range ixn.Permissions {
			compiled, err := compilePermission(perm)
			if err != nil {
				log.Warn("intention permission ignored: it never matches", zap.String("source", ixn.SourceName), zap.Error(err))
				continue
			}
			rule.permissions = append(rule.permissions, compiled)
		}
		rules.intentions = append(rules.intentions, rule)
	}
	return rules
}

func compilePermission(perm *api.IntentionPermission) (permissionRule, error) {
	rule := permissionRule{allow: perm.Action == api.IntentionActionAllow, needsJWT: perm.JWT != nil}
	h := perm.HTTP
	if h == nil {
		return rule, nil
	}
	m := &httpMatch{pathExact: h.PathExact, pathPrefix: h.PathPrefix, methods: h.Methods}
	var err error
	if h.PathRegex != "" {
		if m.pathRegex, err = anchored(h.PathRegex); err != nil {
			return rule, fmt.Errorf("path regex %q: %v", h.PathRegex, err)
		}
	}
	for _, hdr := range h.Header {
		hm := headerMatch{IntentionHTTPHeaderPermission: hdr}
		if hdr.Regex != "" {
			if hm.regex, err = anchored(hdr.Regex); err != nil {
				return rule, fmt.Errorf("header %s regex %q: %v", hdr.Name, hdr.Regex, err)
			}
		}
		m.headers = append(m.headers, hm)
	}
	rule.http = m
	return rule, nil
}

// anchored compiles a regular expression that must match a whole value,
// as Envoy's do.
func anchored(expr string) (*regexp.Regexp, error) {
	return regexp.Compile("^(?:" + expr + ")$")
}

// allows evaluates the rules for a caller and request, falling back to
// defaultAllow.
func (r *intentionRules) allows(req *http.Request, service, namespace, partition string, defaultAllow bool) bool {
	for i := range r.intentions {
		rule := &r.intentions[i]
		if !rule.matchesSource(service, namespace, partition) {
			continue
		}
		if len(rule.permissions) == 0 {
			return rule.allow
		}
		for _, perm := range rule.permissions {
			if perm.http.matches(req) {
				return perm.allow && !perm.needsJWT
			}
		}
		return defaultAllow
	}
	return defaultAllow
}

func (rule *intentionRule) matchesSource(service, namespace, partition string) bool {
	return matchesName(rule.sourceName, service, "") &&
		matchesName(rule.sourceNS, namespace, "default") &&
		matchesName(rule.sourcePartition, partition, "default")
}

// matchesName reports whether an intention's name (a name, *, or empty
// for the default) matches a caller's (empty for the default).
func matchesName(pattern, name, defaultName string) bool {
	return pattern == "*" || cmp.Or(pattern, defaultName) == cmp.Or(name, defaultName)
}

// matches reports whether every condition of m holds for req; a nil
// match matches every request.
func (m *httpMatch) matches(req *http.Request) bool {
	if m == nil {
		return true
	}
	path := req.URL.Path
	switch {
	case m.pathExact != "" && path != m.pathExact,
		m.pathPrefix != "" && !strings.HasPrefix(path, m.pathPrefix),
		m.pathRegex != nil && !m.pathRegex.MatchString(path),
		len(m.methods) > 0 && !slices.Contains(m.methods, req.Method):
		return false
	}
	for i := range m.headers {
		if !m.headers[i].matches(req.Header) {
			return false
		}
	}
	return true
}

// matches evaluates one header condition, as Envoy's header matchers do:
// several values of a header are joined with commas, and a missing header
// matches only an inverted Present condition: inverted or not, no other
// condition matches it.
func (hm *headerMatch) matches(header http.Header) bool {
	values, present := header[http.CanonicalHeaderKey(hm.Name)]
	if !present {
		return hm.Present && hm.Invert
	}
	value := strings.Join(values, ",")
	fold := func(s string) string { return s }
	if hm.IgnoreCase {
		fold = strings.ToLower
	}
	ok := true // Present, or no condition but the header's name
	switch {
	case hm.Present:
	case hm.Exact != "":
		ok = fold(value) == fold(hm.Exact)
	case hm.Prefix != "":
		ok = strings.HasPrefix(fold(value), fold(hm.Prefix))
	case hm.Suffix != "":
		ok = strings.HasSuffix(fold(value), fold(hm.Suffix))
	case hm.Contains != "":
		ok = strings.Contains(fold(value), fold(hm.Contains))
	case hm.regex != nil:
		ok = hm.regex.MatchString(value)
	}
	return ok != hm.Invert
}

// Interface guards
var (
	_ caddy.Provisioner     = (*ConsulIntentions)(nil)
	_ caddy.CleanerUpper    = (*ConsulIntentions)(nil)
	_ caddyfile.Unmarshaler = (*ConsulIntentions)(nil)
	_ consul.Watch          = (*intentionsWatch)(nil)
)
