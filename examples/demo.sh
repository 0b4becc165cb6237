#!/usr/bin/env bash
# The caddymesh demo: a Consul dev agent, three demo backends registered
# in it with weights 5, 3 and 1, and Caddy with examples/Caddyfile.
# Run it with `make demo`; it runs until Ctrl-C and then cleans up.
set -euo pipefail
cd "$(dirname "$0")/.."
source examples/lib.sh demo

start_consul
for i in 1 2 3; do
	weight=$((i == 1 ? 5 : i == 2 ? 3 : 1))
	"$work/backend" -name "greeter-$i" -listen "127.0.0.1:900$i" -weight "$weight" \
		>"$work/backend-$i.log" 2>&1 &
	pids+=($!)
done
./caddy run --config examples/Caddyfile --adapter caddyfile >"$work/caddy.log" 2>&1 &
pids+=($!)
await_port 8080

cat <<MSG

caddymesh demo is running (logs in $work/).

  Gateway:   curl http://127.0.0.1:8080/
  Weights:   for i in \$(seq 18); do curl -s http://127.0.0.1:8080/; done | sort | uniq -c
  Sticky:    for i in \$(seq 6); do curl -s -H 'X-User: alice' http://127.0.0.1:8080/session/cart; done
  Consul UI: http://$CONSUL_HTTP_ADDR/ui/dc1/services/greeter
  Watches:   curl -s http://localhost:2019/mesh/services

  Fail an instance's health check, then watch it leave the rotation:
             curl -X POST http://127.0.0.1:9001/fail
  Heal it:   curl -X POST http://127.0.0.1:9001/recover
  Maintenance mode, from Consul's side:
             curl -X PUT "http://$CONSUL_HTTP_ADDR/v1/agent/service/maintenance/greeter-2?enable=true"

  Canary through Consul's discovery chain (/canary/ follows it): send 10% to greeter-3,
             for f in examples/canary/{1,2,3}-*.json; do CONSUL_HTTP_ADDR=$CONSUL_HTTP_ADDR $consul config write "\$f"; done
             for i in \$(seq 20); do curl -s http://127.0.0.1:8080/canary/; done | sort | uniq -c
  and X-Canary: 1 always to it:
             CONSUL_HTTP_ADDR=$CONSUL_HTTP_ADDR $consul config write examples/canary/4-router.json
             curl -s -H 'X-Canary: 1' http://127.0.0.1:8080/canary/
  The chain as Caddy evaluates it:
             curl -s http://localhost:2019/mesh/chains/greeter

Press Ctrl-C to stop.
MSG
wait "${pids[-1]}"
