#!/usr/bin/env bash
# The soak test at full scale: 200 clients x 2,000 calls (unary, streaming, fd-carrying) with
# random disconnects and reconnects, against one host. CI runs it at a reduced scale.
set -euo pipefail
cd "$(dirname "$0")/.."
PERFETTO_IPC_SOAK=full swift test -c release -Xswiftc -enable-testing --no-parallel --filter SoakTests
