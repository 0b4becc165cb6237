// Command backend is the demo's backend: an HTTP server that answers with
// its name, registers itself in Consul with a weight and an HTTP health
// check (unless -register=false, for when a sidecar registers it), and
// deregisters when it stops.
//
//	backend -name greeter-1 -listen 127.0.0.1:9001 -service greeter -weight 5
//
// POST /fail makes its health check fail, POST /recover heals it: watch
// caddymesh take it out of rotation and back, without a reload.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	name := flag.String("name", "backend", "name it answers with, and its Consul service ID")
	listen := flag.String("listen", "127.0.0.1:9001", "address to listen on")
	service := flag.String("service", "greeter", "Consul service to register as")
	weight := flag.Int("weight", 1, "Consul passing weight")
	consul := flag.String("consul", envOr("CONSUL_HTTP_ADDR", "127.0.0.1:8500"), "Consul HTTP address")
	register := flag.Bool("register", true, "register in Consul (off when a sidecar registers it)")
	flag.Parse()

	var failing atomic.Bool
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {
		if failing.Load() {
			http.Error(w, "failing on request", http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("POST /fail", func(w http.ResponseWriter, _ *http.Request) {
		failing.Store(true)
		fmt.Fprintf(w, "%s: health check fails from now on\n", *name)
	})
	mux.HandleFunc("POST /recover", func(w http.ResponseWriter, _ *http.Request) {
		failing.Store(false)
		fmt.Fprintf(w, "%s: health check passes from now on\n", *name)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s (%s %s)\n", *name, r.Method, r.URL.Path)
	})

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)

	if !*register {
		log.Printf("%s: serving on %s", *name, ln.Addr())
		waitForStop()
		shutdown(srv)
		return
	}
	reg := registration{ID: *name, Name: *service, Weights: weights{Passing: *weight, Warning: 1}}
	reg.Address, reg.Port = splitHostPort(ln.Addr().String())
	reg.Check = check{
		HTTP: "http://" + ln.Addr().String() + "/health", Interval: "1s", Timeout: "1s",
		DeregisterCriticalServiceAfter: "1m", Status: "passing", // it is up: no need to wait for a first check

	}
	if err := put(*consul, "/v1/agent/service/register", reg); err != nil {
		log.Fatalf("registering in Consul at %s: %v", *consul, err)
	}
	log.Printf("%s: serving on %s, registered as %s with weight %d", *name, ln.Addr(), *service, *weight)

	waitForStop()
	if err := put(*consul, "/v1/agent/service/deregister/"+*name, nil); err != nil {
		log.Printf("%s: deregistering: %v", *name, err)
	}
	shutdown(srv)
}

// waitForStop returns on Ctrl-C or SIGTERM.
func waitForStop() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, os.Interrupt, syscall.SIGTERM)
	<-stop
}

// shutdown lets requests in flight finish, for at most 5s.
func shutdown(srv *http.Server) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(ctx)
}

type registration struct {
	ID, Name, Address string
	Port              int
	Weights           weights
	Check             check
}

type weights struct{ Passing, Warning int }

type check struct {
	HTTP, Interval, Timeout, DeregisterCriticalServiceAfter, Status string
}

// put sends body as JSON to Consul's agent API.
func put(consul, path string, body any) error {
	data, err := json.Marshal(body)
	if err != nil {
		return err
	}
	req, err := http.NewRequest(http.MethodPut, "http://"+consul+path, bytes.NewReader(data))
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", path, resp.Status)
	}
	return nil
}

func splitHostPort(addr string) (string, int) {
	host, port, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(port)
	return host, n
}

func envOr(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}
