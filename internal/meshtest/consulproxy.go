package meshtest

import (
	"context"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// ConsulMode is how a ConsulProxy answers.
type ConsulMode int

const (
	// ConsulAnswers forwards requests to the agent.
	ConsulAnswers ConsulMode = iota
	// ConsulFails answers 500.
	ConsulFails
	// ConsulHangs answers nothing until the mode changes.
	ConsulHangs
	// ConsulLoses answers nothing, ever, even after the mode changes: the
	// requests it takes are lost, as on a connection the agent's crash
	// left half-open. Only the caller giving up ends them.
	ConsulLoses
)

// ConsulProxy stands between Caddy and a real Consul agent: it records the
// requests Caddy makes to Consul, and makes Consul answer 500s or hang,
// which a real agent does not do on demand. A mode applies to the requests
// in flight too: a blocking query forwarded to the agent is cut when the
// mode changes, and answered as the new mode says.
type ConsulProxy struct {
	srv       *httptest.Server
	agent     string
	transport *http.Transport

	mu    sync.Mutex
	paths []string // of the requests so far
	mode  ConsulMode
	phase context.Context // canceled when the mode changes
	next  context.CancelFunc
}

// StartConsulProxy starts a proxy to the agent at agent (host:port),
// answering; the test stops it at its end.
func StartConsulProxy(t testing.TB, agent string) *ConsulProxy {
	p := &ConsulProxy{agent: agent, transport: &http.Transport{}}
	p.phase, p.next = context.WithCancel(context.Background())
	p.srv = httptest.NewServer(http.HandlerFunc(p.serve))
	t.Cleanup(func() {
		// Caddy's blocking queries, still running, would hold Close up:
		// refuse new ones first, then cut those in flight.
		p.srv.Listener.Close()
		p.srv.CloseClientConnections()
		p.srv.Close()
		p.next()
		p.transport.CloseIdleConnections()
	})
	return p
}

// Addr is the proxy's host:port, for Caddy's Consul address.
func (p *ConsulProxy) Addr() string { return p.srv.Listener.Addr().String() }

// Set switches the proxy to mode.
func (p *ConsulProxy) Set(mode ConsulMode) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.next()
	p.mode = mode
	p.phase, p.next = context.WithCancel(context.Background())
}

// Requests returns how many requests went to paths starting with prefix
// ("" for all of them).
func (p *ConsulProxy) Requests(prefix string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, path := range p.paths {
		if strings.HasPrefix(path, prefix) {
			n++
		}
	}
	return n
}

// current returns the mode and the context that ends with it.
func (p *ConsulProxy) current() (ConsulMode, context.Context) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mode, p.phase
}

func (p *ConsulProxy) serve(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	p.paths = append(p.paths, r.URL.Path)
	p.mu.Unlock()
	for r.Context().Err() == nil {
		mode, phase := p.current()
		switch mode {
		case ConsulFails:
			http.Error(w, "injected fault", http.StatusInternalServerError)
			return
		case ConsulLoses:
			io.Copy(io.Discard, r.Body) // read all: the server then sees the caller go
			<-r.Context().Done()
			return
		case ConsulHangs:
			select {
			case <-phase.Done():
			case <-r.Context().Done():
			}
		case ConsulAnswers:
			if p.forward(w, r, phase) {
				return
			}
		}
	}
}

// forward sends r to the agent until phase ends, and reports whether it
// answered w.
func (p *ConsulProxy) forward(w http.ResponseWriter, r *http.Request, phase context.Context) bool {
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	defer context.AfterFunc(phase, cancel)()
	out := r.Clone(ctx)
	out.URL.Scheme, out.URL.Host, out.Host, out.RequestURI = "http", p.agent, p.agent, ""
	resp, err := p.transport.RoundTrip(out)
	if err != nil {
		if phase.Err() != nil {
			return false // the mode changed: answer as it says
		}
		http.Error(w, err.Error(), http.StatusBadGateway)
		return true
	}
	defer resp.Body.Close()
	maps.Copy(w.Header(), resp.Header)
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, resp.Body)
	return true
}
