#!/usr/bin/env bash
# Two sidecars in front of service B, and service A's sidecar calling B
# through Consul. Run it with `make sidecars`; Ctrl-C stops it all.
set -euo pipefail
cd "$(dirname "$0")/../.."
source examples/lib.sh sidecars

start_consul
declare -A sidecar
for i in 1 2; do
	"$work/backend" -name "b-$i" -listen "127.0.0.1:920$i" -register=false >"$work/app-b$i.log" 2>&1 &
	pids+=($!)
	PORT=820$i APP=127.0.0.1:920$i INSTANCE=b-$i ADMIN=localhost:201$i \
		./caddy run --config examples/sidecars/b.Caddyfile --adapter caddyfile >"$work/sidecar-b$i.log" 2>&1 &
	pids+=($!)
	sidecar[$i]=$!
done
PORT=8200 ADMIN=localhost:2010 ./caddy run --config examples/sidecars/a.Caddyfile --adapter caddyfile \
	>"$work/sidecar-a.log" 2>&1 &
pids+=($!)
await_port 8200

cat <<MSG

A's sidecar is on http://127.0.0.1:8200/; B's sidecars are on :8201 and :8202 (logs in $work/).

  Call B from A:   curl http://127.0.0.1:8200/
  Watch B's sidecars in A's admin API:
                   curl -s http://localhost:2010/mesh/services/b
  B's registrations, in its first sidecar's admin API:
                   curl -s http://localhost:2011/mesh/registrations
  Stop one of B's sidecars gracefully while A calls B: no call fails.
                   while curl -fsS -o /dev/null http://127.0.0.1:8200/; do :; done &
                   kill -TERM ${sidecar[1]}

Press Ctrl-C to stop.
MSG
wait "${pids[-1]}"
