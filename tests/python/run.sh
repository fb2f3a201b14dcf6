#!/usr/bin/env bash
# Python client tests: talks to a real local cluster (two vitrine-shard
# processes and one vitrine-router) through the public vitrine.v1.Vitrine
# service, with stubs generated from proto/ on every run.
#
# Usage: bash tests/python/run.sh [extra pytest args]
# Needs the debug binaries and the text model (built/fetched by
# `bash scripts/test.sh`); without them the tests skip.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

venv="$root/.cache/venv"
pins=(grpcio==1.85.1 grpcio-tools==1.85.1 protobuf==7.36.2 pytest==9.2.0 onnxruntime==1.31.1 tokenizers==0.22.2 numpy==2.3.5)
source "$root/scripts/venv.sh"
pinned_venv "$venv" "${pins[@]}"

gen="tests/python/gen"
rm -rf "$gen"
mkdir -p "$gen"
"$venv/bin/python" -m grpc_tools.protoc -I proto \
  --python_out="$gen" --grpc_python_out="$gen" \
  proto/vitrine/v1/vitrine.proto proto/vitrine/v1/shard.proto
touch "$gen/vitrine/__init__.py" "$gen/vitrine/v1/__init__.py"

# conftest.py also puts gen/ on sys.path; PYTHONPATH covers other entry points.
export PYTHONPATH="$root/$gen${PYTHONPATH:+:$PYTHONPATH}"
# -p no:cacheprovider: no .pytest_cache left in the work tree.
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/python "$@"
