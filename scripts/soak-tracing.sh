#!/usr/bin/env bash
# The tracing soak at full scale: `tracebox traced`, 16 `tracebox producer --continuous`
# processes x 4 writer threads, and 4 consumers that start, read, clone and stop sessions for
# [seconds] (default 180); then every packet is accounted for (delivered, or lost and counted in
# its session's trace stats) and the service's fd count and RSS must not have grown. Prints the
# figures. CI runs a short form (4 producers x 2 threads, 15 s) in the ordinary test run.
#
#   scripts/soak-tracing.sh [seconds]
#   SOAK_CONFIGURATION=debug scripts/soak-tracing.sh 60     # without a release build
# (-enable-testing: other test targets import modules @testable, and swift test builds them all)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-180}"
PERFETTO_TRACING_SOAK=full PERFETTO_TRACING_SOAK_SECONDS="$seconds" \
  swift test -c "${SOAK_CONFIGURATION:-release}" -Xswiftc -enable-testing --no-parallel --filter TracingSoakTests
