package discovery

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"

	"github.com/caddymesh/caddymesh/internal/consul"
)

// Registration states, as the admin API and metrics show them.
const (
	stateRegistering = "registering" // not yet in Consul, or being updated
	stateRegistered  = "registered"  // the servers' catalog has it, passing
	stateAgentOnly   = "agent_only"  // the local agent has it, the servers' catalog does not
	stateFailing     = "failing"     // Consul refuses it, cannot be reached, or its check fails; retrying
)

// syncGrace is how long after registering the servers' catalog may lack
// the instance before it counts as agent_only: the agent syncs it within
// milliseconds.
const syncGrace = 5 * time.Second

// agentTimeout bounds each call to the local agent, which answers in
// milliseconds: a call it never answers (a connection its crash left
// half-open, an agent stuck restarting) is given up and retried, instead
// of holding the registrar, and the state it shows, for good. Taking an
// instance out of Consul at shutdown waits no longer either.
const agentTimeout = 5 * time.Second

// registrars holds what this process keeps registered in Consul, by
// instance ID. Configs share a registrar while they want the same
// instance: a reload that keeps a registration does not touch Consul.
var registrars = struct {
	sync.Mutex
	byID map[string]*registrar
}{byID: make(map[string]*registrar)}

// registrar keeps one instance registered in Consul while configs want
// it: it registers it, retries while Consul is unreachable, registers it
// again if the agent loses it (a restarted dev agent, say), and reports
// its TTL check.
type registrar struct {
	users  int // configs wanting it; guarded by registrars
	wanted atomic.Pointer[wantedRegistration]
	status atomic.Pointer[registrationStatus]
	logger func() *zap.Logger
	pacer  *consul.Pacer

	interrupt atomic.Pointer[context.CancelFunc] // cuts the current wait short
	cancel    context.CancelFunc
	done      chan struct{}
}

// wantedRegistration is what a registrar keeps in Consul, and through
// which connection.
type wantedRegistration struct {
	spec   *Registration
	conn   consul.Connection
	client *api.Client
	http   *http.Client
}

// registrationStatus is where a registration stands, for the admin API and
// metrics.
type registrationStatus struct {
	State string    `json:"state"`
	Error string    `json:"error,omitempty"`
	Since time.Time `json:"since"`
}

// acquireRegistrations makes sure each of specs is registered in Consul
// through conn, for one more config.
func acquireRegistrations(specs []*Registration, conn consul.Connection) error {
	registrars.Lock()
	defer registrars.Unlock()
	for _, spec := range specs {
		want, err := newWantedRegistration(spec, conn)
		if err != nil {
			return err
		}
		r := registrars.byID[spec.ID]
		if r == nil {
			r = startRegistrar(want)
			registrars.byID[spec.ID] = r
		} else if !want.same(r.wanted.Load()) {
			r.update(want)
		}
		r.users++
	}
	return nil
}

// releaseRegistrations lets go of specs for one config. The instances no
// config wants any more are taken out of Consul; it then waits for the
// longest drain among them, so that callers stop sending before Caddy
// stops serving.
func releaseRegistrations(specs []*Registration) {
	var leaving []*registrar
	var drain time.Duration
	registrars.Lock()
	for _, spec := range specs {
		r := registrars.byID[spec.ID]
		if r == nil {
			continue
		}
		if r.users--; r.users == 0 {
			delete(registrars.byID, spec.ID)
			leaving = append(leaving, r)
			drain = max(drain, time.Duration(r.wanted.Load().spec.Drain))
		}
	}
	registrars.Unlock()

	var wg sync.WaitGroup
	for _, r := range leaving {
		wg.Go(r.deregister)
	}
	wg.Wait()
	if len(leaving) > 0 {
		caddy.Log().Named("mesh.register").Info("draining before stopping", zap.Duration("drain", drain))
		time.Sleep(drain)
	}
}

func newWantedRegistration(spec *Registration, conn consul.Connection) (*wantedRegistration, error) {
	client, httpClient, err := conn.NewClient()
	if err != nil {
		return nil, err
	}
	return &wantedRegistration{spec: spec, conn: conn, client: client, http: httpClient}, nil
}

// same reports whether w registers the same instance as other, the same
// way.
func (w *wantedRegistration) same(other *wantedRegistration) bool {
	return w.conn == other.conn && reflect.DeepEqual(w.spec.agentRegistration(), other.spec.agentRegistration())
}

func startRegistrar(want *wantedRegistration) *registrar {
	ctx, cancel := context.WithCancel(context.Background())
	r := newRegistrar(want, consul.RealClock)
	r.cancel = cancel
	go r.run(ctx)
	return r
}

func newRegistrar(want *wantedRegistration, c consul.Clock) *registrar {
	r := &registrar{
		logger: func() *zap.Logger { return caddy.Log().Named("mesh.register") },
		pacer:  consul.NewPacer(c, nil),
		done:   make(chan struct{}),
	}
	r.wanted.Store(want)
	r.status.Store(&registrationStatus{State: stateRegistering, Since: c.Now()})
	return r
}

// update makes the registrar register want instead, at once.
func (r *registrar) update(want *wantedRegistration) {
	old := r.wanted.Swap(want)
	old.http.CloseIdleConnections()
	if interrupt := r.interrupt.Load(); interrupt != nil {
		(*interrupt)()
	}
}

func (r *registrar) log() *zap.Logger {
	spec := r.wanted.Load().spec
	return r.logger().With(zap.String("service", spec.Name), zap.String("id", spec.ID))
}

// setStatus records where the registration stands; a change of state
// is logged once, with its reason.
func (r *registrar) setStatus(state string, err error) {
	previous := r.status.Load()
	if previous.State == state && (err == nil || previous.Error == err.Error()) {
		return
	}
	status := &registrationStatus{State: state, Since: r.pacer.Clock().Now()}
	if err != nil {
		status.Error = err.Error()
	}
	r.status.Store(status)
	if previous.State == state {
		return // same state, another reason: not worth a log line
	}
	switch state {
	case stateRegistered:
		r.log().Info("registered: the servers' catalog has the instance, passing")
	case stateAgentOnly:
		r.log().Warn("the local agent has the instance but the servers' catalog does not: callers may not see it, or see a stale entry", zap.Error(err))
	case stateFailing:
		r.log().Warn("registration failing; retrying in the background", zap.Error(err))
	}
}

// run registers the instance and keeps it registered, paced like the
// watchers: rate-limited, and backing off while registering or keeping
// fails.
func (r *registrar) run(ctx context.Context) {
	defer close(r.done)
	for r.pacer.Ready(ctx) {
		want := r.wanted.Load()
		err := r.register(ctx, want)
		if err == nil {
			err = r.keep(ctx, want)
		}
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			r.setStatus(stateFailing, err)
			if !r.pacer.Failed(ctx) {
				return
			}
		}
	}
}

// register puts the instance into the agent, replacing any checks it had.
func (r *registrar) register(ctx context.Context, want *wantedRegistration) error {
	ctx, cancel := context.WithTimeout(ctx, agentTimeout)
	defer cancel()
	opts := api.ServiceRegisterOpts{ReplaceExistingChecks: true, Token: want.conn.Token()}
	err := want.client.Agent().ServiceRegisterOpts(want.spec.agentRegistration(), opts.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("registering with the agent: %w", err)
	}
	return nil
}

// keep reports the instance's TTL check, makes sure the agent still has
// it, and follows the servers' catalog entry with blocking queries. It
// returns nil when the instance must be registered again (the agent lost
// it, or the registration changed), an error when the agent fails.
func (r *registrar) keep(ctx context.Context, want *wantedRegistration) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r.interrupt.Store(&cancel)
	if r.wanted.Load() != want { // changed before interrupt was set
		return nil
	}
	registered := r.pacer.Clock().Now()
	var nodeID string
	var askedNode bool
	wait := 5 * time.Minute
	if check := want.spec.Check; check.TTL {
		wait = time.Duration(check.Interval) / 2
	}
	var index uint64
	for r.pacer.Ready(ctx) {
		if has, err := askAgent(ctx, want); err != nil {
			return err
		} else if !has {
			r.log().Warn("the agent no longer has this instance; registering it again")
			return nil
		}
		r.pacer.Succeeded()
		if !askedNode {
			nodeID, askedNode = r.agentNodeID(ctx, want), true
		}
		judgeBy := wait
		if grace := syncGrace - r.pacer.Clock().Now().Sub(registered); grace > 0 { // judge when it ends
			judgeBy = min(wait, grace)
		}
		entries, next, err := r.catalogEntries(ctx, want, index, judgeBy)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			r.setStatus(stateAgentOnly, fmt.Errorf("the servers cannot be asked: %w", err))
			index = 0
			if !r.pacer.Failed(ctx) {
				return nil
			}
			continue
		}
		index = consul.NextIndex(index, next)
		state, reason := catalogState(entries, nodeID)
		if state == stateAgentOnly && r.pacer.Clock().Now().Sub(registered) < syncGrace {
			state, reason = stateRegistering, nil
		}
		r.setStatus(state, reason)
	}
	return nil
}

// askAgent reports the instance's TTL check, if it has one, and reports
// whether the agent still has the instance, within agentTimeout.
func askAgent(ctx context.Context, want *wantedRegistration) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, agentTimeout)
	defer cancel()
	q := (&api.QueryOptions{Token: want.conn.Token()}).WithContext(ctx)
	if want.spec.Check.TTL {
		if err := want.client.Agent().UpdateTTLOpts("service:"+want.spec.ID, "reported by caddymesh", api.HealthPassing, q); err != nil {
			return false, fmt.Errorf("reporting the TTL check: %w", err)
		}
	}
	if _, _, err := want.client.Agent().Service(want.spec.ID, q); err != nil {
		if gone := (api.StatusError{}); errors.As(err, &gone) && gone.Code == http.StatusNotFound {
			return false, nil
		}
		return false, fmt.Errorf("asking the agent: %w", err)
	}
	return true, nil
}

// deregister stops the registrar and takes the instance out of Consul.
func (r *registrar) deregister() {
	r.cancel()
	<-r.done
	want := r.wanted.Load()
	if status := r.status.Load(); status.State == stateAgentOnly {
		r.log().Warn("deregistering an instance the servers' catalog may still list; callers may keep sending to it (see the README)",
			zap.String("reason", status.Error))
	}
	defer want.http.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), agentTimeout)
	defer cancel()
	q := (&api.QueryOptions{Token: want.conn.Token()}).WithContext(ctx)
	if err := want.client.Agent().ServiceDeregisterOpts(want.spec.ID, q); err != nil {
		r.log().Error("taking the instance out of consul failed; consul removes it when its check has been critical for deregister_critical_after",
			zap.Error(err))
		return
	}
	r.log().Info("taken out of consul")
}

// registrationView is a registration as the admin API shows it.
type registrationView struct {
	ID      string               `json:"id"`
	Name    string               `json:"name"`
	Address string               `json:"address,omitempty"`
	Port    int                  `json:"port"`
	Tags    []string             `json:"tags,omitempty"`
	Meta    map[string]string    `json:"meta,omitempty"`
	Weights *RegistrationWeights `json:"weights,omitempty"`
	Check   checkView            `json:"check"`
	Connect *RegistrationConnect `json:"connect,omitempty"`
	Drain   string               `json:"drain"`
	Configs int                  `json:"configs"`
	registrationStatus
}

// checkView is a registration's check as the admin API shows it.
type checkView struct {
	HTTP                    string `json:"http,omitempty"`
	TCP                     string `json:"tcp,omitempty"`
	TTL                     bool   `json:"ttl,omitempty"`
	Interval                string `json:"interval"`
	Timeout                 string `json:"timeout,omitempty"`
	DeregisterCriticalAfter string `json:"deregister_critical_after"`
}

// registrationViews lists what this process keeps registered, by ID.
func registrationViews() []registrationView {
	registrars.Lock()
	defer registrars.Unlock()
	views := make([]registrationView, 0, len(registrars.byID))
	for _, r := range registrars.byID {
		spec := r.wanted.Load().spec
		c := spec.Check
		views = append(views, registrationView{
			ID: spec.ID, Name: spec.Name, Address: spec.Address, Port: spec.Port,
			Tags: spec.Tags, Meta: spec.Meta, Weights: spec.Weights, Check: checkView{
				HTTP: c.HTTP, TCP: c.TCP, TTL: c.TTL, Interval: time.Duration(c.Interval).String(),
				Timeout:                 time.Duration(c.Timeout).String(),
				DeregisterCriticalAfter: time.Duration(c.DeregisterCriticalAfter).String(),
			},
			Connect: spec.Connect, Drain: time.Duration(spec.Drain).String(), Configs: r.users,
			registrationStatus: *r.status.Load(),
		})
	}
	slices.SortFunc(views, func(a, b registrationView) int { return strings.Compare(a.ID, b.ID) })
	return views
}
