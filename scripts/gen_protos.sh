#!/usr/bin/env bash
# Regenerates the KServe v2 / Triton gRPC stubs in pipeline/engines/remote/proto/ from the .proto
# files vendored there (see its README.md). Run from anywhere: bash scripts/gen_protos.sh
#
# The generator is pinned: grpcio-tools 1.76.0 bundles protoc 31.1, whose Python code asks for a
# protobuf runtime >= 6.31.1 and whose _grpc module asks for grpcio >= 1.76.0 -- the lower bounds in
# pyproject.toml. A newer grpcio-tools would raise them (1.85 emits code that needs protobuf 7.35),
# so change the pins with it. It runs in a venv of its own: grpcio-tools 1.76 wants protobuf < 7,
# which the project's venv need not have.
set -euo pipefail

TOOLS_VERSION=1.76.0
cd "$(dirname "$0")/.."
PROTO=pipeline/engines/remote/proto
VENV=${PROTOGEN_VENV:-${TMPDIR:-/tmp}/streamgraph-protogen-$TOOLS_VERSION}
PYTHON=${PYTHON:-python3}

if ! "$VENV/bin/python" -c "import grpc_tools.protoc" 2>/dev/null; then
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "grpcio-tools==$TOOLS_VERSION"
fi

rm -f "$PROTO"/*_pb2.py "$PROTO"/*_pb2.pyi "$PROTO"/*_pb2_grpc.py
"$VENV/bin/python" -m grpc_tools.protoc -I "$PROTO" \
    --python_out="$PROTO" --pyi_out="$PROTO" --grpc_python_out="$PROTO" \
    "$PROTO/model_config.proto" "$PROTO/grpc_service.proto"
# model_config.proto has no service: its _grpc module would be empty.
rm -f "$PROTO/model_config_pb2_grpc.py"
# protoc writes top-level imports (`import model_config_pb2 as ...`), which only work with the
# folder on sys.path; make them relative to the package.
sed -i -E 's/^import ([a-z_]+_pb2) as /from . import \1 as /' "$PROTO"/*_pb2.py "$PROTO"/*_pb2.pyi "$PROTO"/*_pb2_grpc.py

"$VENV/bin/python" -m grpc_tools.protoc --version
ls -l "$PROTO"
