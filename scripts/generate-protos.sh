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
generate_messages Sources/TracingAPI/Generated Public \
  perfetto/common/builtin_clock.proto \
  perfetto/common/commit_data_request.proto \
  perfetto/common/data_source_descriptor.proto \
  perfetto/common/observable_events.proto \
  perfetto/common/semantic_type.proto \
  perfetto/common/system_info.proto \
  perfetto/common/trace_attributes.proto \
  perfetto/common/trace_stats.proto \
  perfetto/common/tracing_service_capabilities.proto \
  perfetto/common/tracing_service_state.proto \
  perfetto/common/track_event_descriptor.proto \
  perfetto/config/data_source_config.proto \
  perfetto/config/priority_boost/priority_boost_config.proto \
  perfetto/config/test_config.proto \
  perfetto/config/trace_config.proto \
  perfetto/config/track_event/track_event_config.proto \
  perfetto/trace/clock_snapshot.proto \
  perfetto/trace/interned_data/interned_data.proto \
  perfetto/trace/perfetto/concurrent_session_event.proto \
  perfetto/trace/perfetto/trace_provenance.proto \
  perfetto/trace/perfetto/tracing_service_event.proto \
  perfetto/trace/profiling/profile_common.proto \
  perfetto/trace/remote_clock_sync.proto \
  perfetto/trace/test_event.proto \
  perfetto/trace/trace.proto \
  perfetto/trace/trace_packet.proto \
  perfetto/trace/trace_packet_defaults.proto \
  perfetto/trace/trace_uuid.proto \
  perfetto/trace/track_event/counter_descriptor.proto \
  perfetto/trace/track_event/debug_annotation.proto \
  perfetto/trace/track_event/log_message.proto \
  perfetto/trace/track_event/process_descriptor.proto \
  perfetto/trace/track_event/source_location.proto \
  perfetto/trace/track_event/state_descriptor.proto \
  perfetto/trace/track_event/task_execution.proto \
  perfetto/trace/track_event/thread_descriptor.proto \
  perfetto/trace/track_event/track_descriptor.proto \
  perfetto/trace/track_event/track_event.proto \
  perfetto/trace/trigger.proto

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
