package discovery

import (
	"cmp"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"

	"github.com/caddymesh/caddymesh/internal/consul"
	"github.com/caddymesh/caddymesh/internal/svcname"
	"github.com/caddymesh/caddymesh/internal/validate"
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

	key       intentionsKey
	watch     *intentionsWatch
	validated validate.Once // Validate's answer, for Caddy's call after Provision
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
	if err := ci.Validate(); err != nil {
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

// Validate rejects bad values, naming the field and the value.
// Provision calls it before acting on them; its checks run once.
func (ci *ConsulIntentions) Validate() error { return ci.validated.Do(ci.check) }

// check makes Validate's checks.
func (ci *ConsulIntentions) check() error {
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
	self, err := consul.ReadAgentSelf(w.Client(), q)
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
	w.agentDefault = cmp.Or(self.DefaultIntentionPolicy, self.ACLDefaultPolicy)
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

// Interface guards
var (
	_ caddy.Provisioner  = (*ConsulIntentions)(nil)
	_ caddy.Validator    = (*ConsulIntentions)(nil)
	_ caddy.CleanerUpper = (*ConsulIntentions)(nil)
	_ consul.Watch       = (*intentionsWatch)(nil)
)
