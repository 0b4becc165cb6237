# Shared by the example scripts: start Consul, stop everything on exit.
# Source it from the repository's root; it sets CONSUL_HTTP_ADDR, consul
# (the agent's path) and work (the scratch directory), and collects the
# PIDs to stop in pids.

CONSUL_PORT=${CONSUL_PORT:-8500}
export CONSUL_HTTP_ADDR=127.0.0.1:$CONSUL_PORT
work=.work/$1
mkdir -p "$work"

pids=()
cleanup() {
	trap - EXIT INT TERM
	echo
	echo "stopping..."
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
		kill "${pids[i]}" 2>/dev/null || true
		wait "${pids[i]}" 2>/dev/null || true
	done
}
trap cleanup EXIT INT TERM

consul=$(cd internal/tools/consul && go tool -n consul)
go build -o "$work/backend" ./examples/backend

# start_consul starts a Consul dev agent and waits for its leader.
start_consul() {
	"$consul" agent -dev -bind 127.0.0.1 -client 127.0.0.1 -http-port "$CONSUL_PORT" \
		-dns-port -1 -grpc-port -1 -grpc-tls-port -1 -log-level warn \
		-hcl 'disable_update_check = true' >"$work/consul.log" 2>&1 &
	pids+=($!)
	echo -n "waiting for Consul on $CONSUL_HTTP_ADDR"
	until "$consul" operator raft list-peers 2>/dev/null | grep -q leader; do
		kill -0 "${pids[-1]}" 2>/dev/null || { echo; cat "$work/consul.log"; exit 1; }
		echo -n .
		sleep 0.5
	done
	echo " ok"
}

# await_port waits until something listens on a loopback port, or the
# process last started exits.
await_port() {
	until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
		kill -0 "${pids[-1]}" 2>/dev/null || { echo "failed; logs in $work/"; exit 1; }
		sleep 0.2
	done
}
