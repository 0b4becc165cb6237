# caddymesh: the two commands a newcomer needs are `make demo` and
# `make test`. Everything they need is built on demand from pinned Go
# tools (internal/tools) and cached by the go command.

GO      ?= go
XCADDY    = $(shell cd internal/tools/xcaddy && $(GO) tool -n xcaddy)
BENCHSTAT = $(shell cd internal/tools/perf && $(GO) tool -n benchstat)
CADDY_VERSION = v2.11.9
# xcaddy needs a version for the local module; without one it asks the
# module proxy for caddymesh, which is not published.
LOCAL_MODULE  = github.com/caddymesh/caddymesh@v0.0.0-00010101000000-000000000000=.

.PHONY: build consul demo sidecars test fleet bench bench-proxies chaos clean

## build: ./caddy, a stock Caddy with caddymesh built in by xcaddy
build: caddy

caddy: go.mod go.sum $(shell git ls-files '*.go')
	$(XCADDY) build $(CADDY_VERSION) --output ./caddy --with $(LOCAL_MODULE)

## consul: build the pinned Consul agent (cached by the go command)
consul:
	@cd internal/tools/consul && $(GO) tool -n consul

## demo: Consul, three weighted demo backends and Caddy; Ctrl-C stops it all
demo: build consul
	examples/demo.sh

## sidecars: service A's sidecar calling service B's two sidecars through Consul
sidecars: build consul
	examples/sidecars/run.sh

## test: formatting, vet, and every test with the race detector, one package at a time: the end-to-end
## packages run Consul agents, Caddy processes and timed loads, which would crowd each other out on two cores
test: consul
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$unformatted" ]; then echo "not gofmt-formatted:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) test -race -p 1 ./...

## fleet: three Caddy processes sharing consul_kv get one certificate from Pebble (HTTP-01 for real),
## another takes over from a killed lock holder, and a certificate is renewed after a Consul outage
fleet: consul
	$(GO) test -count 1 -v -run TestFleet ./storage/ -args -fleet

## bench: the benchmarks behind BENCHMARKS.md, each beside its peer
bench: consul
	mkdir -p .work
	$(GO) test -run '^$$' -bench GetUpstreams -benchmem -count 6 ./discovery/ ./gateway/ > .work/upstreams.txt
	$(BENCHSTAT) -col /source .work/upstreams.txt
	$(GO) test -run '^$$' -bench Propagation -benchtime 25x ./discovery/ | grep -E '^(Benchmark|cpu)'
	$(GO) test -run '^$$' -bench Select -benchmem -count 6 ./lbpolicy/ > .work/select.txt
	$(BENCHSTAT) -col /policy -filter '/policy:(smooth_weighted OR round_robin OR weighted_round_robin)' .work/select.txt
	$(BENCHSTAT) -col /policy -filter '/policy:(consistent_hash OR consistent_hash_bounded_load OR ip_hash OR uri_hash OR header)' .work/select.txt
	$(BENCHSTAT) -col /policy -filter '/policy:(least_latency OR least_conn OR random_choose_2)' .work/select.txt
	$(GO) test -run '^$$' -bench Preselect -benchmem ./lbpolicy/ | grep -E '^Benchmark'
	$(GO) test -run '^$$' -bench Build -benchmem ./lbpolicy/ | grep -E '^Benchmark'
	$(GO) test -count 1 -run 'TestRingBalance|TestBoundedLoadsWithZipf' -v ./lbpolicy/ | grep -E 'peak|moved'
	$(GO) test -run '^$$' -bench 'RouteMatch|ServiceGate' -benchmem -count 6 ./gateway/ > .work/gateway.txt
	$(BENCHSTAT) -col /handler -filter '.name:ServiceGate' .work/gateway.txt
	$(BENCHSTAT) -col /router -filter '.name:RouteMatch' .work/gateway.txt
	$(GO) test -run '^$$' -bench Handler -benchmem -count 6 ./middleware/ > .work/handlers.txt
	$(BENCHSTAT) -col /handler .work/handlers.txt
	$(GO) test -run '^$$' -bench NormalizeRequest -benchmem -count 6 ./internal/urlpath/ > .work/urlpath.txt
	$(BENCHSTAT) -col /by .work/urlpath.txt
	$(GO) test -run '^$$' -bench Handshake -benchtime 1000x -count 6 ./connect/ > .work/handshake.txt
	$(BENCHSTAT) -col /transport .work/handshake.txt
	$(GO) test -run '^$$' -bench 'GetCertificate|VerifyServer|Destination|RootStillListed|TrustDomainOf' -benchmem ./connect/ | grep -E '^Benchmark'
	$(MAKE) bench-proxies

## chaos: the resilience suite's long form (RESILIENCE.md); `make test` runs its short form
chaos: consul
	mkdir -p .work
	$(GO) test -count 1 -v -timeout 30m ./internal/chaos/ -args -chaos.full > .work/chaos.txt; \
	status=$$?; grep -E '^(\||--- |long form)' .work/chaos.txt; \
	[ $$status = 0 ] || { tail -n 60 .work/chaos.txt; exit $$status; }

SUDO = $(if $(filter 0,$(shell id -u)),,sudo)

## bench-proxies: stock Caddy, caddymesh, nginx and HAProxy side by side, the proxy alone on core 0,
## clients over HTTP/1.1 then HTTP/2; then tail latency with one slow, one degrading and one failing
## backend (installs nginx, HAProxy,
## wrk and h2load from Debian when missing)
bench-proxies: build consul
	@command -v nginx >/dev/null && command -v haproxy >/dev/null && command -v wrk >/dev/null && command -v h2load >/dev/null || \
		{ $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends nginx haproxy wrk nghttp2-client; }
	mkdir -p .work/bin
	$(GO) build -o .work/bin/proxybench ./internal/proxybench
	taskset -c 1 .work/bin/proxybench -reps 5 -duration 4s
	taskset -c 1 .work/bin/proxybench -h2 -upstreams 4 -reps 5 -duration 4s
	taskset -c 1 .work/bin/proxybench -tail -duration 20s


clean:
	rm -rf ./caddy .work
