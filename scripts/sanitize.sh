#!/usr/bin/env bash
# Runs the whole test suite under a sanitizer, in its own build folder.
#
#   scripts/sanitize.sh thread     ThreadSanitizer
#   scripts/sanitize.sh address    AddressSanitizer + LeakSanitizer (suppressing only the test
#                                  runner's and Swift runtime's own allocations)
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:-thread}
case "$kind" in
  thread)
    swift test --no-parallel --sanitize=thread --scratch-path .build-tsan
    ;;
  address)
    export LSAN_OPTIONS="suppressions=$(pwd)/scripts/lsan-suppressions.txt:print_suppressions=0"
    export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0"
    swift test --no-parallel --sanitize=address --scratch-path .build-asan
    ;;
  *)
    echo "usage: $0 thread|address" >&2
    exit 2
    ;;
esac
