#!/usr/bin/env bash
# Regenerate Python messages, gRPC stubs and .pyi files: protos/ -> generated/.
# generated/ is committed; CI runs this and fails when the result differs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PATH="$(dirname "$PY"):$PATH"   # protoc-gen-mypy lives beside the interpreter
SITE=$($PY -c 'import google.api, pathlib; print(pathlib.Path(google.api.__path__[0]).parents[1])')
rm -rf generated/cinema
mkdir -p generated
# google/api and google/type come from googleapis-common-protos at run time; only our own
# protos are generated.
$PY -m grpc_tools.protoc -Iprotos -I"$SITE" \
  --python_out=generated --grpc_python_out=generated \
  --mypy_out=quiet:generated --mypy_grpc_out=quiet:generated \
  $(find protos -name '*.proto' | LC_ALL=C sort)
