# Sourced by the scripts that run our programs beside Perfetto's (interop.sh,
# read-side-by-side.sh), after `set -euo pipefail` and a `cd` to the repository: builds our
# tracebox (`$ours`), makes a scratch folder (`$work`) whose p.sock and c.sock every service and
# client started here use, and kills what was started (`pids`) when the script exits.
swift build -c release --product tracebox >/dev/null
ours=$(swift build -c release --show-bin-path)/tracebox
work=$(mktemp -d)
export PERFETTO_PRODUCER_SOCK_NAME=$work/p.sock PERFETTO_CONSUMER_SOCK_NAME=$work/c.sock
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

service() { # $1 = binary (+ args): starts a service on fresh sockets; its pid is $service_pid
  rm -f "$work"/p.sock "$work"/c.sock
  "$@" >"$work/service.log" 2>&1 & service_pid=$!; pids+=($service_pid)
  for _ in $(seq 100); do [ -S "$work/c.sock" ] && return; sleep 0.05; done
  echo "service did not start: $(cat "$work/service.log")"; exit 1
}
stop_service() { kill "$service_pid"; wait "$service_pid" 2>/dev/null || true; }
