#!/usr/bin/env bash
# Reading a full trace buffer from our traced and from Perfetto's, side by side, with the same
# producer (ours), alternating, each with Perfetto's client (perfetto) and with ours (tracebox
# perfetto). Needs Perfetto's traced and perfetto built from its public source
# (../shared/TRACING.md, last section).
#
#   scripts/read-side-by-side.sh /path/to/perfetto/out/rel [rounds]
#
# Each line: which service, the trace's size, and how long perfetto took after the session's
# fixed 2 s (flush, stop, ReadBuffers and writing the file), with the MB/s that makes.
set -euo pipefail
real=${1:?usage: scripts/read-side-by-side.sh PERFETTO_OUT_DIR [rounds]}
rounds=${2:-3}
cd "$(dirname "$0")/.."
source scripts/lib/beside-perfetto.sh
printf '%s\n' 'buffers { size_kb: 131072 }' 'data_sources { config { name: "tracebox.test" } }' \
  'duration_ms: 2000' > "$work/read.txt"

one() { # $1 = label, $2 = client command, $3... = service command
  local label=$1 client=$2; shift 2
  rm -f "$work/out.pftrace"
  service "$@"
  # Packets of ~1 KiB from two threads for the whole session: the 128 MiB ring is full (or
  # nearly) when the session stops.
  "$ours" producer --continuous --threads 2 -p 1000 --interval-us 0 >/dev/null 2>&1 & local producer=$!; pids+=($producer)
  sleep 0.3
  local start end
  start=$(date +%s%N)
  $client -c "$work/read.txt" --txt -o "$work/out.pftrace" >/dev/null 2>&1
  end=$(date +%s%N)
  local bytes ms
  bytes=$(stat -c %s "$work/out.pftrace")
  ms=$(( (end - start) / 1000000 - 2000 ))
  echo "$label: $(( bytes / 1048576 )) MiB read in ${ms} ms after the session ($(( bytes / 1000 / (ms > 0 ? ms : 1) )) MB/s)"
  kill "$producer"; wait "$producer" 2>/dev/null || true
  stop_service
}
for _ in $(seq "$rounds"); do
  one "our traced,  Perfetto's client" "$real/perfetto" "$ours" traced
  one "real traced, Perfetto's client" "$real/perfetto" "$real/traced"
  one "our traced,  our client       " "$ours perfetto" "$ours" traced
  one "real traced, our client       " "$ours perfetto" "$real/traced"
done
