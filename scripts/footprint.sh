#!/usr/bin/env bash
# Footprint of a process using the library, as BENCHMARKS.md ("Footprint") reports it: resident
# memory of an idle host after one call and of an idle client after its call, and the stripped
# size of the binary, for `minimal-echo` (the IPC core, the epoll backend and one generated
# service) built three ways:
#   dynamic   the default `swift build -c release` (shared Swift runtime and Foundation)
#   static    --static-swift-stdlib
#   static+   --static-swift-stdlib, linked by lld with packed relative relocations (DT_RELR,
#             glibc >= 2.36): the relocation table is not paged in at start
#   exe       -static-executable: one file, glibc and libstdc++ linked in too, not position
#             independent (no relocations at start). Name lookups of TCP addresses still load
#             glibc's NSS modules at run time (the linker warns about getaddrinfo); numeric
#             addresses and unix sockets need nothing besides the binary.
# With a Perfetto build of Benchmarks/PerfettoCppEcho (scripts/perfetto-cpp-echo.sh), its C++ host
# is measured beside them.
#
#   scripts/footprint.sh [PERFETTO_SOURCE]
set -euo pipefail
cd "$(dirname "$0")/.."
perfetto=${1:-}
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

build() { # $1 = scratch path, rest = extra flags; prints the binary
  if ! swift build -c release --product minimal-echo --scratch-path "$1" "${@:2}" >"$work/build.log" 2>&1; then
    cat "$work/build.log" >&2
    exit 1
  fi
  echo "$(swift build -c release --scratch-path "$1" "${@:2}" --show-bin-path 2>/dev/null)/minimal-echo"
}
resident() { # $1 = pid: VmRSS, RssAnon, RssFile in kB
  awk '/^(VmRSS|RssAnon|RssFile)/ {printf "%s ", $2} END {print ""}' "/proc/$1/status"
}
wait_socket() { for _ in $(seq 250); do [ -S "$1" ] && return; sleep 0.02; done; echo "no socket $1" >&2; exit 1; }

measure() { # $1 = label, $2 = binary
  local socket=$work/$1.sock
  "$2" serve "$socket" >/dev/null & local host=$!; pids+=($host)
  wait_socket "$socket"
  "$2" call "$socket" --idle >"$work/$1.out" & local client=$!; pids+=($client)
  # The client prints the reply, then idles.
  for _ in $(seq 250); do grep -q '^reply' "$work/$1.out" && break; sleep 0.02; done
  grep -q '^reply' "$work/$1.out" || { echo "$1: the client got no reply" >&2; exit 1; }
  sleep 0.5
  read -r host_rss host_anon host_file < <(resident "$host")
  read -r client_rss client_anon client_file < <(resident "$client")
  strip -o "$work/stripped" "$2"
  printf '%-10s %9s %9s %9s %11s %12s\n' "$1" "$host_rss" "$host_anon" "$host_file" "$client_rss" \
    "$(stat -c %s "$work/stripped")"
  kill "$host" "$client"; wait "$host" "$client" 2>/dev/null || true
}

dynamic=$(build .build)
static=$(build .build-static --static-swift-stdlib)
packed=$(build .build-static-packed --static-swift-stdlib -Xswiftc -Xclang-linker -Xswiftc -fuse-ld=lld \
  -Xlinker -z -Xlinker pack-relative-relocs)
executable=$(build .build-static-executable -Xswiftc -static-executable)
printf '%-10s %9s %9s %9s %11s %12s\n' build host_kB anon_kB file_kB client_kB stripped_B
measure dynamic "$dynamic"
measure static "$static"
measure static+ "$packed"
measure exe "$executable"
if [ -n "$perfetto" ]; then
  theirs=$perfetto/out/swift_pfecho/pf_ipc_echo
  "$theirs" serve --socket "$work/pf.sock" >/dev/null & host=$!; pids+=($host)
  wait_socket "$work/pf.sock"
  "$dynamic" call "$work/pf.sock" >/dev/null
  sleep 0.5
  read -r host_rss host_anon host_file < <(resident "$host")
  strip -o "$work/stripped" "$theirs"
  printf '%-10s %9s %9s %9s %11s %12s\n' "perfetto" "$host_rss" "$host_anon" "$host_file" "-" "$(stat -c %s "$work/stripped")"
fi
