#!/usr/bin/env bash
# Regenerates the Swift code for etcd's v3 gRPC API in Sources/EtcdAPI/Generated from the .proto files next to this
# script. The generated files are committed: CI never builds the protoc plugins (that would cost ~10 minutes a run).
#
# Inputs (committed): etcd 3.4.23's rpc.proto, kv.proto and auth.proto, in etcd's own directory layout under
# Protos/etcd/ because rpc.proto imports "etcd/mvcc/mvccpb/kv.proto". They are stripped of the gogoproto and
# google.api annotations, which only steer Go code generation and the JSON gateway; the wire format is unchanged.
#
# Tools:
#   protoc                    Debian's protobuf-compiler (3.21.12 was used)
#   protoc-gen-swift          apple/swift-protobuf 1.39.0
#   protoc-gen-grpc-swift-2   grpc/grpc-swift-protobuf 2.4.1 (with grpc/grpc-swift-2 2.4.3)
# Build the two plugins outside this repository, for example in /tmp/protoc-plugins, from a Package.swift that depends
# on exactly those two versions:
#   swift build --scratch-path /tmp/protoc-plugins/.build --product protoc-gen-swift
#   swift build --scratch-path /tmp/protoc-plugins/.build --product protoc-gen-grpc-swift-2
#
# Run:
#   PLUGINS=/tmp/protoc-plugins/.build/debug Sources/EtcdAPI/Protos/generate.sh
# To take the .proto files afresh from etcd's sources (Debian's golang-etcd-server-dev ships them under
# usr/share/gocode/src/go.etcd.io/etcd), strip them and regenerate:
#   PLUGINS=... Sources/EtcdAPI/Protos/generate.sh --import-from /path/to/go.etcd.io/etcd
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
output="$(dirname "$here")/Generated"
plugins="${PLUGINS:?set PLUGINS to the folder holding protoc-gen-swift and protoc-gen-grpc-swift-2}"
files=(etcd/mvcc/mvccpb/kv.proto etcd/auth/authpb/auth.proto etcd/etcdserver/etcdserverpb/rpc.proto)

if [ "${1:-}" = "--import-from" ]; then
    source_root="${2:?--import-from needs the etcd source folder}"
    for file in "${files[@]}"; do
        mkdir -p "$here/$(dirname "$file")"
        # Drops the gogoproto and google/api imports, the gogoproto options, and every
        # `option (google.api.http) = { ... };` block. Those blocks nest (additional_bindings), so braces are counted
        # instead of matched with a regular expression.
        python3 - "$source_root/${file#etcd/}" "$here/$file" <<'PYTHON'
import re
import sys

source, destination = sys.argv[1], sys.argv[2]
text = open(source).read()
text = re.sub(r'^import "(gogoproto/gogo|google/api/annotations)\.proto";\n', "", text, flags=re.M)
text = re.sub(r"^// for grpc-gateway\n", "", text, flags=re.M)
text = re.sub(r"^option \(gogoproto\.[a-z_]+\) = (true|false);\n", "", text, flags=re.M)
if "(gogoproto." in text:
    sys.exit(f"{source}: a gogoproto option this script does not know how to strip is left")
marker = "option (google.api.http)"
while (start := text.find(marker)) >= 0:
    line_start = text.rfind("\n", 0, start) + 1
    position = text.index("{", start)
    depth = 0
    while True:
        if text[position] == "{":
            depth += 1
        elif text[position] == "}":
            depth -= 1
            if depth == 0:
                break
        position += 1
    end = text.index(";", position) + 1
    if text[end:end + 1] == "\n":
        end += 1
    text = text[:line_start] + text[end:]
relative = source.split("go.etcd.io/etcd/")[-1]
header = (
    f"// From etcd v3.4.23's {relative}, stripped of its gogoproto and google.api\n"
    "// annotations by Sources/EtcdAPI/Protos/generate.sh (only Go code generation and the JSON gateway use them).\n\n"
)
open(destination, "w").write(header + text)
PYTHON
    done
fi

rm -rf "$output"
mkdir -p "$output"
# Messages of all three files; services (client stubs only) of rpc.proto, the one file that declares any.
protoc \
    --plugin=protoc-gen-swift="$plugins/protoc-gen-swift" \
    -I "$here" \
    --swift_out="$output" \
    --swift_opt=Visibility=Package,FileNaming=DropPath \
    "${files[@]/#/$here/}"
protoc \
    --plugin=protoc-gen-grpc-swift-2="$plugins/protoc-gen-grpc-swift-2" \
    -I "$here" \
    --grpc-swift-2_out="$output" \
    --grpc-swift-2_opt=Visibility=Package,Client=true,Server=false,FileNaming=DropPath \
    "$here/etcd/etcdserver/etcdserverpb/rpc.proto"
echo "generated into $output:"
(cd "$output" && wc -l ./*.swift)
