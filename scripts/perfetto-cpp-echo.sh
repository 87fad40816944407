#!/usr/bin/env bash
# Side by side with Perfetto's own C++ IPC: builds Benchmarks/PerfettoCppEcho (a C++ EchoService
# host and bench client on Perfetto's ipc::Host / ipc::Client) inside a Perfetto source tree, then
# measures every pairing of host and client, ours and theirs, beside a two-process blocking
# ping-pong (the floor), alternating, in the same minutes.
#
#   scripts/perfetto-cpp-echo.sh /path/to/perfetto-source [rounds] [iterations]
#
# The Perfetto source is Perfetto's public tree (../shared/TRACING.md, last section); this script
# adds src/swift_pfecho/ and one group to it and builds in out/swift_pfecho. Nothing of it is part
# of this repository.
set -euo pipefail
src=${1:?usage: scripts/perfetto-cpp-echo.sh PERFETTO_SOURCE [rounds] [iterations]}
rounds=${2:-3}
iterations=${3:-20000}
here=$(cd "$(dirname "$0")/.." && pwd)
src=$(cd "$src" && pwd)

mkdir -p "$src/src/swift_pfecho"
cp "$here/Benchmarks/PerfettoCppEcho/BUILD.gn" "$here/Benchmarks/PerfettoCppEcho/pf_ipc_echo.cc" \
  "$here/Protos/pfpeers/echo.proto" "$src/src/swift_pfecho/"
grep -q swift_pfecho "$src/BUILD.gn" ||
  printf '\ngroup("swift_pfecho") {\n  deps = [ "src/swift_pfecho:pf_ipc_echo" ]\n}\n' >> "$src/BUILD.gn"
out=$src/out/swift_pfecho
if [ ! -f "$out/build.ninja" ]; then
  (cd "$src" && gn gen "$out" --args='is_debug=false is_clang=false is_system_compiler=true
    cc="gcc" cxx="g++" is_hermetic_clang=false use_custom_libcxx=false skip_buildtools_check=true
    perfetto_use_system_protobuf=true perfetto_use_system_zlib=true enable_perfetto_zstd=false
    enable_perfetto_re2=false enable_perfetto_ui=false enable_perfetto_heapprofd=false
    enable_perfetto_traced_perf=false enable_perfetto_traced_probes=false
    enable_perfetto_unittests=false enable_perfetto_integration_tests=false
    enable_perfetto_benchmarks=false enable_perfetto_fuzzers=false enable_perfetto_tools=false
    enable_perfetto_version_gen=false extra_cflags="-g0 -O2"' >/dev/null)
fi
ninja -C "$out" -j2 pf_ipc_echo >/dev/null
theirs=$out/pf_ipc_echo

if ! swift build -c release --product ipc-echo --package-path "$here" >"$src/out/swift_pfecho/swift-build.log" 2>&1; then
  cat "$src/out/swift_pfecho/swift-build.log" >&2
  exit 1
fi
ours=$(swift build -c release --show-bin-path --package-path "$here")/ipc-echo

work=$(mktemp -d)
server_pid=
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
serve() { # $1 = label, rest = command; starts a host on $work/echo.sock
  rm -f "$work/echo.sock"
  "${@:2}" --socket "$work/echo.sock" >/dev/null 2>&1 & server_pid=$!
  for _ in $(seq 200); do [ -S "$work/echo.sock" ] && return; sleep 0.02; done
  echo "$1 host did not start" >&2; exit 1
}
stop() { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=; }
field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p"; }

declare -A rss
printf '%-6s %-16s %9s %9s %13s %18s\n' size "host <- client" p50_us mean_us client_cpu_us floor_p50_us
for round in $(seq "$rounds"); do
  for payload in 16 65536; do
    for host in ours theirs; do
      if [ $host = ours ]; then serve ours "$ours" serve; else serve theirs "$theirs" serve; fi
      for client in ours theirs; do
        floor=
        if [ $client = ours ]; then
          # --compare-raw first measures the floor: a blocking ping-pong with a forked C peer.
          out=$("$ours" bench --socket "$work/echo.sock" --payload "$payload" --iterations "$iterations" --compare-raw 2>/dev/null)
          floor=$(echo "$out" | grep '^raw' | field p50)
        else
          out=$("$theirs" bench --socket "$work/echo.sock" --payload "$payload" --iterations "$iterations" 2>/dev/null)
        fi
        line=$(echo "$out" | grep '^echo')
        printf '%-6s %-16s %9s %9s %13s %18s\n' "$payload" "$host <- $client" \
          "$(echo "$line" | field p50)" "$(echo "$line" | field mean)" "$(echo "$line" | field cpu)" "$floor"
      done
      rss[$host]=$(awk '/^VmRSS/ {print $2}' "/proc/$server_pid/status")
      stop
    done
  done
  echo "host resident after its calls: ours ${rss[ours]} kB, Perfetto's ${rss[theirs]} kB"
done
