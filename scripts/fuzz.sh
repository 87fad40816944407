#!/usr/bin/env bash
# Builds the libFuzzer targets in Fuzz/ and runs each for a while, seeded with the real
# Perfetto conversations in Tests/IPCProtocolTests/Fixtures/interop and the seeds in Fuzz/Seeds
# (real shared-memory chunks; the tracing service's ports, from the captured producer and
# consumer conversations of Tests/TracingAPITests/Fixtures/interop).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]     default 60; CI uses a short run
#
# A crash leaves its input as Fuzz/crash-* (and the script fails): turn it into a regression
# test, fix, and keep the input in Fuzz/Regressions/<target>/, which every run replays first.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
fixtures=Tests/IPCProtocolTests/Fixtures/interop

swift build -c release --sanitize=fuzzer --package-path Fuzz --scratch-path .build-fuzz 2>&1 | tail -3
bin=$(swift build -c release --sanitize=fuzzer --package-path Fuzz --scratch-path .build-fuzz --show-bin-path)

export SWIFT_BACKTRACE=enable=no
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

run() { # $1 = target, rest = seed files
  local target=$1; shift
  local corpus="$work/$target"
  mkdir -p "$corpus"
  cp "$@" "$corpus/" 2>/dev/null || true
  local regressions=Fuzz/Regressions/$target
  if [ -d "$regressions" ] && [ -n "$(ls -A "$regressions")" ]; then
    echo "== $target: replaying regressions"
    "$bin/$target" "$regressions"/* > "$work/$target.regressions.log" 2>&1 || { cat "$work/$target.regressions.log"; exit 1; }
  fi
  echo "== $target: fuzzing for ${seconds}s"
  (cd Fuzz && "$bin/$target" -max_total_time="$seconds" -print_final_stats=1 -rss_limit_mb=4096 "$corpus") \
    > "$work/$target.log" 2>&1 || { tail -50 "$work/$target.log"; echo "$target found a crash (input saved in Fuzz/)" >&2; exit 1; }
  grep -aE "stat::number_of_executed_units|Done" "$work/$target.log" | tr '\n' ' '; echo
}

run FuzzFrameDeserializer $fixtures/*/*.bin
run FuzzHost $fixtures/*/*.c2s.bin $fixtures/first_bytes/*.bin
run FuzzClient $fixtures/*/*.s2c.bin
run FuzzSharedMemory Fuzz/Seeds/FuzzSharedMemory/*.bin
run FuzzProducerPort Fuzz/Seeds/FuzzProducerPort/*.bin
run FuzzConsumerPort Fuzz/Seeds/FuzzConsumerPort/*.bin
