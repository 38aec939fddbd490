#!/usr/bin/env bash
# Generates the Python protobuf and gRPC modules, with their mypy stubs, from protos/.
# This script owns everything under <out>/tradingboost: it wipes and rewrites it.
#
# Usage: scripts/gen_protos.sh [OUT_DIR]
#   OUT_DIR  where to write (default: generated/ at the repo root; relative paths are
#            taken from the current directory).
#   PY       environment variable: the Python with grpcio-tools and mypy-protobuf
#            installed (default: .venv/bin/python at the repo root).
# Output is deterministic: rerunning it with the same tools gives byte-identical files.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$root/generated}
case $out in
  /*) ;;
  *) out=$PWD/$out ;;
esac
py=${PY:-$root/.venv/bin/python}
cd "$root"

# protoc's bundled well-known types (google/protobuf/timestamp.proto, ...).
wkt_include=$("$py" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')
# protoc-gen-mypy and protoc-gen-mypy_grpc live next to the interpreter's scripts.
scripts_dir=$("$py" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')

mapfile -t protos < <(find protos -name '*.proto' -type f | LC_ALL=C sort)
if [[ ${#protos[@]} -eq 0 ]]; then
  echo "gen_protos.sh: no .proto files under protos/" >&2
  exit 1
fi

rm -rf "$out/tradingboost"
mkdir -p "$out"

"$py" -m grpc_tools.protoc \
  -I protos \
  -I "$wkt_include" \
  --plugin=protoc-gen-mypy="$scripts_dir/protoc-gen-mypy" \
  --plugin=protoc-gen-mypy_grpc="$scripts_dir/protoc-gen-mypy_grpc" \
  --python_out="$out" \
  --grpc_python_out="$out" \
  --mypy_out=quiet:"$out" \
  --mypy_grpc_out=quiet:"$out" \
  "${protos[@]}"

# Regular packages (not namespace packages), typed.
: >"$out/tradingboost/__init__.py"
: >"$out/tradingboost/oms/__init__.py"
: >"$out/tradingboost/oms/v1/__init__.py"
: >"$out/tradingboost/py.typed"
