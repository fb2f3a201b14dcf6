#!/usr/bin/env bash
# Chart tests: renders charts/vitrine offline with the Helm engine shipped in
# helm-python-sdk (no helm binary, no cluster), lints it, validates every
# manifest against the Kubernetes schemas, checks values.schema.json, the
# dashboard and the Dockerfile. scripts/test.sh runs it; about 10 s once the
# virtualenv exists.
#
# Usage: bash tests/chart/run.sh [extra pytest args]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

venv="$root/.cache/chart-venv"
pins=(helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 yamllint==1.38.0 pytest==9.2.0 pyyaml==6.0.4 jsonschema==4.26.0)
source "$root/scripts/venv.sh"
pinned_venv "$venv" "${pins[@]}"

# -p no:cacheprovider: no .pytest_cache left in the work tree.
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/chart "$@"
