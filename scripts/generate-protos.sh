#!/usr/bin/env bash
# Regenerates every generated Swift file from the .proto files in Protos/.
#
#   scripts/generate-protos.sh           regenerate in place
#   scripts/generate-protos.sh --check   regenerate into a temp dir and fail if the committed
#                                        files differ (CI runs this)
#
# Uses Debian's `protoc` (apt-get install protobuf-compiler) and `protoc-gen-swift` built from
# the swift-protobuf version pinned in Package.swift, so output is reproducible.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

check=0
[ "${1:-}" = "--check" ] && check=1

command -v protoc >/dev/null || { echo "protoc not found: apt-get install protobuf-compiler" >&2; exit 1; }

scratch="$root/.build-protoc"
swift build -c release --scratch-path "$scratch" --product protoc-gen-swift >&2
swift build -c release --scratch-path "$scratch" --product protoc-gen-swift-ipc >&2
plugin_dir=$(swift build -c release --scratch-path "$scratch" --show-bin-path)

out_root="$root"
if [ $check = 1 ]; then
  out_root=$(mktemp -d)
  trap 'rm -rf "$out_root"' EXIT
fi

# One entry per generated module: proto files (relative to Protos/) -> output folder.
generate_messages() { # $1 = output folder relative to the repo, $2 = visibility, rest = protos
  local dest="$out_root/$1" visibility=$2; shift 2
  mkdir -p "$dest"
  protoc -I Protos \
    --plugin=protoc-gen-swift="$plugin_dir/protoc-gen-swift" \
    --swift_out="$dest" \
    --swift_opt=Visibility="$visibility",FileNaming=DropPath \
    "$@"
}

generate_services() { # $1 = output folder relative to the repo, $2 = visibility, rest = protos
  local dest="$out_root/$1" visibility=$2; shift 2
  mkdir -p "$dest"
  protoc -I Protos \
    --plugin=protoc-gen-swift-ipc="$plugin_dir/protoc-gen-swift-ipc" \
    --swift-ipc_out="$dest" \
    --swift-ipc_opt=Visibility="$visibility",FileNaming=DropPath \
    "$@"
}

generated_dirs=(Sources/IPCProtocol/Wire/Generated Examples/EchoService/Generated Sources/TracingAPI/Generated)
generate_messages Sources/IPCProtocol/Wire/Generated Public perfetto/ipc/wire_protocol.proto
generate_messages Examples/EchoService/Generated Public pfpeers/echo.proto
generate_services Examples/EchoService/Generated Public pfpeers/echo.proto
# Perfetto tracing messages (config, common, trace) used by the TracingAPI module.
tracing_protos=$(cd Protos && find perfetto/common perfetto/config perfetto/trace -name '*.proto' | LC_ALL=C sort)
# The ports (ProducerPort, ConsumerPort, RelayPort): their messages and their IPC services.
port_protos=(perfetto/ipc/producer_port.proto perfetto/ipc/consumer_port.proto perfetto/ipc/relay_port.proto)
# shellcheck disable=SC2086 # one word per file
generate_messages Sources/TracingAPI/Generated Public $tracing_protos "${port_protos[@]}"
generate_services Sources/TracingAPI/Generated Public "${port_protos[@]}"

if [ $check = 1 ]; then
  stale=0
  for dir in "${generated_dirs[@]}"; do
    diff -ru "$root/$dir" "$out_root/$dir" || stale=1
  done
  if [ $stale = 0 ]; then
    echo "generated code is up to date"
  else
    echo "generated code is stale: run scripts/generate-protos.sh and commit the result" >&2
    exit 1
  fi
fi
