package discovery

import (
	"context"
	"errors"
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
)

// Registration states, as the admin API and metrics show them.
const (
	stateRegistering = "registering" // not yet in Consul, or being updated
	stateRegistered  = "registered"  // in Consul
	stateFailing     = "failing"     // Consul refuses or cannot be reached; retrying
)

// deregisterTimeout bounds taking an instance out of Consul at shutdown.
const deregisterTimeout = 5 * time.Second

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

	interrupt atomic.Pointer[context.CancelFunc] // cuts the current wait short
	cancel    context.CancelFunc
	done      chan struct{}
}

// wantedRegistration is what a registrar keeps in Consul, and through
// which connection.
type wantedRegistration struct {
	spec   *Registration
	conn   connection
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
func acquireRegistrations(specs []*Registration, conn connection) error {
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

func newWantedRegistration(spec *Registration, conn connection) (*wantedRegistration, error) {
	client, httpClient, err := conn.newClient()
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
	r := &registrar{
		logger: func() *zap.Logger { return caddy.Log().Named("mesh.register") },
		cancel: cancel,
		done:   make(chan struct{}),
	}
	r.wanted.Store(want)
	r.setStatus(stateRegistering, nil)
	go r.run(ctx)
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

func (r *registrar) setStatus(state string, err error) {
	status := &registrationStatus{State: state, Since: time.Now()}
	if err != nil {
		status.Error = err.Error()
	}
	r.status.Store(status)
}

func (r *registrar) run(ctx context.Context) {
	defer close(r.done)
	failures := 0
	for ctx.Err() == nil {
		want := r.wanted.Load()
		if err := r.register(ctx, want); err != nil {
			if ctx.Err() != nil {
				return
			}
			if failures++; failures == 1 {
				r.log().Warn("registering in consul failed; retrying in the background", zap.Error(err))
			}
			r.setStatus(stateFailing, err)
			if !sleep(ctx, backoff(failures)) {
				return
			}
			continue
		}
		if failures > 0 {
			r.log().Info("registered in consul after failures", zap.Int("failures", failures))
		} else {
			r.log().Info("registered in consul")
		}
		failures = 0
		r.setStatus(stateRegistered, nil)
		r.keep(ctx, want)
	}
}

// register puts the instance into the agent, replacing any checks it had.
func (r *registrar) register(ctx context.Context, want *wantedRegistration) error {
	opts := api.ServiceRegisterOpts{ReplaceExistingChecks: true, Token: want.conn.token}
	return want.client.Agent().ServiceRegisterOpts(want.spec.agentRegistration(), opts.WithContext(ctx))
}

// keep watches the registered instance with blocking queries, reporting
// its TTL check, and returns when it must be registered again: the agent
// lost it, failed to answer, or the registration changed.
func (r *registrar) keep(ctx context.Context, want *wantedRegistration) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r.interrupt.Store(&cancel)
	if r.wanted.Load() != want { // changed before interrupt was set
		return
	}
	check := want.spec.Check
	wait := 5 * time.Minute
	if check.TTL {
		wait = time.Duration(check.Interval) / 2
	}
	var hash string
	for {
		q := &api.QueryOptions{WaitHash: hash, WaitTime: wait, Token: want.conn.token}
		if check.TTL {
			err := want.client.Agent().UpdateTTLOpts("service:"+want.spec.ID, "reported by caddymesh", api.HealthPassing, q.WithContext(ctx))
			if err != nil {
				return
			}
		}
		timeout, stop := context.WithTimeout(ctx, wait+wait/16+requestSlack)
		_, meta, err := want.client.Agent().Service(want.spec.ID, q.WithContext(timeout))
		stop()
		if err != nil {
			if gone := (api.StatusError{}); errors.As(err, &gone) && gone.Code == http.StatusNotFound {
				r.log().Warn("consul no longer has this instance; registering it again")
			}
			return
		}
		hash = meta.LastContentHash
	}
}

// deregister stops the registrar and takes the instance out of Consul.
func (r *registrar) deregister() {
	r.cancel()
	<-r.done
	want := r.wanted.Load()
	defer want.http.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), deregisterTimeout)
	defer cancel()
	q := (&api.QueryOptions{Token: want.conn.token}).WithContext(ctx)
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
			Drain: time.Duration(spec.Drain).String(), Configs: r.users,
			registrationStatus: *r.status.Load(),
		})
	}
	slices.SortFunc(views, func(a, b registrationView) int { return strings.Compare(a.ID, b.ID) })
	return views
}
