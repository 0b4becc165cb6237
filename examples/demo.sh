#!/usr/bin/env bash
# The caddymesh demo: a Consul dev agent, three demo backends registered
# in it with weights 5, 3 and 1, and Caddy with examples/Caddyfile.
# Run it with `make demo`; it runs until Ctrl-C and then cleans up.
set -euo pipefail
cd "$(dirname "$0")/.."

CONSUL_PORT=${CONSUL_PORT:-8500}
export CONSUL_HTTP_ADDR=127.0.0.1:$CONSUL_PORT
work=.work/demo
mkdir -p "$work"

pids=()
cleanup() {
	trap - EXIT INT TERM
	echo
	echo "stopping the demo..."
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
		kill "${pids[i]}" 2>/dev/null || true
		wait "${pids[i]}" 2>/dev/null || true
	done
}
trap cleanup EXIT INT TERM

consul=$(cd internal/tools/consul && go tool -n consul)
go build -o "$work/backend" ./examples/backend

"$consul" agent -dev -bind 127.0.0.1 -client 127.0.0.1 -http-port "$CONSUL_PORT" \
	-dns-port -1 -grpc-port -1 -grpc-tls-port -1 -log-level warn \
	-hcl 'disable_update_check = true' >"$work/consul.log" 2>&1 &
pids+=($!)
echo -n "waiting for Consul on $CONSUL_HTTP_ADDR"
until [ "$("$consul" operator raft list-peers 2>/dev/null | grep -c leader)" -gt 0 ]; do
	kill -0 "${pids[0]}" 2>/dev/null || { echo; cat "$work/consul.log"; exit 1; }
	echo -n .
	sleep 0.5
done
echo " ok"

for i in 1 2 3; do
	weight=$((i == 1 ? 5 : i == 2 ? 3 : 1))
	"$work/backend" -name "greeter-$i" -listen "127.0.0.1:900$i" -weight "$weight" \
		>"$work/backend-$i.log" 2>&1 &
	pids+=($!)
done

./caddy run --config examples/Caddyfile --adapter caddyfile >"$work/caddy.log" 2>&1 &
pids+=($!)
until (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null; do
	kill -0 "${pids[-1]}" 2>/dev/null || { cat "$work/caddy.log"; exit 1; }
	sleep 0.2
done

cat <<MSG

caddymesh demo is running (logs in $work/).

  Gateway:   curl http://127.0.0.1:8080/
  Spread:    for i in \$(seq 18); do curl -s http://127.0.0.1:8080/; done | sort | uniq -c
  Consul UI: http://$CONSUL_HTTP_ADDR/ui/dc1/services/greeter

  Fail an instance's health check, then watch it leave the rotation:
             curl -X POST http://127.0.0.1:9001/fail
  Heal it:   curl -X POST http://127.0.0.1:9001/recover
  Maintenance mode, from Consul's side:
             curl -X PUT "http://$CONSUL_HTTP_ADDR/v1/agent/service/maintenance/greeter-2?enable=true"

Press Ctrl-C to stop.
MSG
wait "${pids[-1]}"
