#!/usr/bin/env bash
# Runs our programs against the real Perfetto programs, in every direction, and counts what
# arrives. Needs Perfetto's traced, perfetto, example_system_wide (and traced_relay for the
# two-machine directions) built from its public
# source (../shared/TRACING.md, last section); they are not part of this repository.
#
#   scripts/interop.sh /path/to/perfetto/out/rel
#
# Each line says which programs took part and what the trace held. Exits non-zero if a
# direction lost packets.
set -euo pipefail
real=${1:?usage: scripts/interop.sh PERFETTO_OUT_DIR}
cd "$(dirname "$0")/.."
source scripts/lib/beside-perfetto.sh
failed=0

count() { # $1 = trace, $2 = field pattern; prints the number of top-level packets with it
  protoc --decode_raw < "$1" | grep -c "^  $2 {" || true
}
count_inflated() { # $1 = trace, $2 = field number; like count, inside compressed_packets (deflate)
  python3 - "$1" "$2" <<'PY'
import sys, zlib
def varint(b, i):
    v = s = 0
    while True:
        v |= (b[i] & 0x7F) << s; i += 1; s += 7
        if b[i - 1] < 0x80: return v, i
def fields(b):
    i = 0
    while i < len(b):
        key, i = varint(b, i)
        kind = key & 7
        if kind == 0: _, i = varint(b, i); yield key >> 3, None
        elif kind == 1: i += 8; yield key >> 3, None
        elif kind == 5: i += 4; yield key >> 3, None
        else:
            n, i = varint(b, i); yield key >> 3, b[i:i + n]; i += n
want, total, compressed = int(sys.argv[2]), 0, 0
for _, packet in fields(open(sys.argv[1], 'rb').read()):
    for number, value in fields(packet):
        if number == 50:
            compressed += 1
            total += sum(1 for _, inner in fields(zlib.decompress(value)) if any(n == want for n, _ in fields(inner)))
print(total if compressed else 0)
PY
}
our_producer() { # a producer of ours that writes 50 test packets into the next session it is in
  "$ours" producer -n 50 >/dev/null 2>&1 & pids+=($!)
  sleep 0.3
}
expect() { # $1 = label, $2 = got, $3 = wanted
  if [ "$2" -ge "$3" ]; then echo "ok    $1: $2"; else echo "FAIL  $1: $2, wanted $3"; failed=1; fi
}

printf '%s\n' 'buffers { size_kb: 1024 }' 'data_sources { config { name: "track_event" } }' 'duration_ms: 2000' > "$work/sdk.txt"
printf '%s\n' 'buffers { size_kb: 1024 }' 'data_sources { config { name: "tracebox.test" } }' \
  'data_sources { config { name: "track_event" track_event_config { enabled_categories: "tracebox" } } }' \
  'duration_ms: 1500' 'write_into_file: true' 'file_write_period_ms: 500' > "$work/ours.txt"
printf '%s\n' 'buffers { size_kb: 1024 }' 'data_sources { config { name: "tracebox.test" } }' \
  'duration_ms: 1500' 'compression_type: COMPRESSION_TYPE_DEFLATE' > "$work/deflate.txt"
printf '%s\n' 'buffers { size_kb: 1024 }' 'data_sources { config { name: "tracebox.test" } }' \
  'duration_ms: 2500' 'write_into_file: true' 'file_write_period_ms: 200' \
  'unique_session_name: "interop_clone"' > "$work/clone.txt"

service "$ours" traced
"$real/perfetto" --query >"$work/query.txt" 2>&1 && expect "real perfetto --query -> our traced" 1 1
"$real/example_system_wide" >/dev/null 2>&1 & pids+=($!)
"$real/perfetto" -c "$work/sdk.txt" --txt -o "$work/a.pftrace" >/dev/null 2>&1
expect "real SDK producer -> our traced -> real perfetto (track events)" "$(count "$work/a.pftrace" 11)" 6
our_producer
"$real/perfetto" -c "$work/ours.txt" --txt -o "$work/b.pftrace" >/dev/null 2>&1
expect "our producer -> our traced -> real perfetto, write_into_file (test packets)" "$(count "$work/b.pftrace" 900)" 50
our_producer
"$real/perfetto" -c "$work/deflate.txt" --txt -o "$work/e.pftrace" >/dev/null 2>&1
expect "our producer -> our traced -> real perfetto, deflate (test packets in compressed_packets)" "$(count_inflated "$work/e.pftrace" 900)" 50
our_producer
"$real/perfetto" -c "$work/clone.txt" --txt -o "$work/g.pftrace" >/dev/null 2>&1 & clone_source=$!
sleep 1
"$real/perfetto" --clone-by-name interop_clone -o "$work/h.pftrace" >/dev/null 2>&1
wait "$clone_source"
expect "our producer -> our traced -> real perfetto --clone-by-name of a write_into_file session (test packets)" "$(count "$work/h.pftrace" 900)" 50
stop_service

service "$real/traced"
our_producer
"$real/perfetto" -c "$work/ours.txt" --txt -o "$work/c.pftrace" >/dev/null 2>&1
expect "our producer -> real traced -> real perfetto (test packets)" "$(count "$work/c.pftrace" 900)" 50
our_producer
"$ours" perfetto -c "$work/deflate.txt" --txt -o "$work/f.pftrace" 2>/dev/null
expect "our producer -> real traced -> our perfetto, deflate (test packets in compressed_packets)" "$(count_inflated "$work/f.pftrace" 900)" 50
"$real/example_system_wide" >/dev/null 2>&1 & pids+=($!)
sleep 0.3
"$ours" perfetto -c "$work/sdk.txt" --txt -o "$work/d.pftrace" 2>/dev/null
expect "real SDK producer -> real traced -> our perfetto (track events)" "$(count "$work/d.pftrace" 11)" 6
"$ours" perfetto --query >/dev/null && expect "our perfetto --query -> real traced" 1 1
stop_service

# Two machines on loopback: a relay with its own producer socket in front of a host service
# that also listens on TCP. The guest's packets carry the machine id the host derives from the
# relay's hint (the boot id), the same on both hosts.
machine_id=$(python3 -c "
h=0xcbf29ce484222325
for b in open('/proc/sys/kernel/random/boot_id').read().strip().encode(): h=((h^b)*0x100000001b3)&(2**64-1)
print(h&0xffffffff or 1)")
printf '%s\n' 'buffers { size_kb: 1024 }' 'data_sources { config { name: "tracebox.test" } }' \
  'duration_ms: 1500' 'trace_all_machines: true' > "$work/machines.txt"
relayed() { # $1 = host service, $2 = relay ("ours" or "real"), $3 = recorder, $4 = label
  export PERFETTO_PRODUCER_SOCK_NAME=$work/p.sock,127.0.0.1:29181
  if [ "$1" = ours ]; then service "$ours" traced --enable-relay-endpoint; else service "$real/traced" --enable-relay-endpoint; fi
  export PERFETTO_PRODUCER_SOCK_NAME=$work/p.sock
  rm -f "$work/guest.sock"
  if [ "$2" = ours ]; then
    "$ours" relay --relay-socket 127.0.0.1:29181 --producer-socket "$work/guest.sock" >"$work/relay.log" 2>&1 & relay_pid=$!
  else
    PERFETTO_RELAY_SOCK_NAME=127.0.0.1:29181 PERFETTO_PRODUCER_SOCK_NAME=$work/guest.sock "$real/traced_relay" >"$work/relay.log" 2>&1 & relay_pid=$!
  fi
  pids+=($relay_pid)
  for _ in $(seq 100); do [ -S "$work/guest.sock" ] && break; sleep 0.05; done
  PERFETTO_PRODUCER_SOCK_NAME=$work/guest.sock "$ours" producer -n 50 >/dev/null 2>&1 & pids+=($!)
  sleep 0.5
  if [ "$3" = ours ]; then "$ours" perfetto -c "$work/machines.txt" --txt -o "$work/m.pftrace" 2>/dev/null
  else "$real/perfetto" -c "$work/machines.txt" --txt -o "$work/m.pftrace" >/dev/null 2>&1; fi
  expect "$4 (test packets stamped machine_id $machine_id)" "$(protoc --decode_raw < "$work/m.pftrace" | grep -c "^  98: $machine_id\$" || true)" 52
  expect "$4 (the guest's SystemInfo)" "$(count "$work/m.pftrace" 45)" 1
  expect "$4 (RemoteClockSync)" "$(count "$work/m.pftrace" 107)" 1
  kill "$relay_pid"; stop_service
}
if [ -x "$real/traced_relay" ]; then
  relayed ours real ours "our producer -> real traced_relay -> our traced -> our perfetto"
  relayed real ours real "our producer -> our relay -> real traced -> real perfetto"
else
  echo "skip  relays: $real/traced_relay was not built (enable_perfetto_traced_relay=true)"
fi
exit $failed
