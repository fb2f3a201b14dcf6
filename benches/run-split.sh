#!/usr/bin/env bash
# Where one request's time and CPU go, process by process. A cluster of
# SHARDS shards holding ITEMS synthetic vectors serves one request at a time
# for SECONDS. Prints the load generator's line, the CPU each process (router,
# each shard; from /proc) spent per request the load generator counted, and
# the means of the router's and shards' latency histograms over the run (they
# also count the load generator's short warm-up).
#   MODE search-vector | recommend: the vector paths.
#   MODE search-text: 4,000 distinct real titles in order (the query cache
#   never answers); afterwards the same titles embedded bare, one at a time
#   with the shard's one intra-op thread, for comparison.
# Usage: bash benches/run-split.sh [MODE=search-vector] [SHARDS=2] [ITEMS=20000] [SECONDS=10]
set -euo pipefail
MODE="${1:-search-vector}"
SHARDS="${2:-2}"
N="${3:-20000}"
SECS="${4:-10}"
case "$MODE" in
  search-vector | recommend | search-text) ;;
  *) sed -n 2,12p "$0"; exit 2 ;;
esac
source "$(dirname "$0")/peers/setup.sh"
bench_setup vitrine-loadgen numpy==2.3.5
cargo build --release --locked --bins
require_title_vectors
vectors="$root/.cache/bench/e2e-$N.f32"
[[ -f "$vectors" ]] || "$venv/bin/python" benches/peers/synth_vectors.py --base "$dir/base.f32" --n "$N" --out "$vectors"
bench_workdir
texts="$work/texts.txt"
awk -F"\t" 'NR > 1 { print $2 }' "$data/fashion-products/catalog-text-full.tsv" | awk 'NF && !seen[$0]++ && n++ < 4000' >"$texts"

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
port=57051
metrics=$((port + 50))
target/release/vitrine cluster --shards "$SHARDS" --no-demo --port "$port" --metrics-port "$metrics" \
  --data-dir "$work/data" >"$work/cluster.log" 2>&1 &
cluster_pid=$!
wait_for_cluster "$work/cluster.log" "$cluster_pid"
addr="http://127.0.0.1:$port"
target/release/vitrine-loadgen --addr "$addr" --duration 0 --concurrency 1 --seed-items "$N" --seed-from "$vectors" >/dev/null
scrape() { # the histograms' sums and counts, router then shards
  for ((j = 0; j <= SHARDS; j++)); do
    curl -sf "http://127.0.0.1:$((metrics + j))/metrics" | sed -n "s/^\(vitrine_[a-z_]*_seconds_\(sum\|count\)\)\(.*\) \(.*\)$/$j \1\3 \4/p"
  done
}
pids=$(pgrep -P "$cluster_pid")
for pid in $pids; do echo "$pid $(cpu_ticks "$pid")"; done >"$work/cpu.before"
scrape >"$work/metrics.before"
line=$(target/release/vitrine-loadgen --addr "$addr" --duration "$SECS" --concurrency 1 --mode "$MODE" \
  --items "$N" --queries "$dir/queries.f32" $([[ "$MODE" == search-text ]] && echo --texts "$texts"))
scrape >"$work/metrics.after"
for pid in $pids; do echo "$pid $(cpu_ticks "$pid")"; done >"$work/cpu.after"
echo "$line"
requests=$(sed -n 's/.* requests=\([0-9]*\).*/\1/p' <<<"$line")
echo "CPU per request (ms), from /proc:"
while read -r pid before; do
  after=$(awk -v p="$pid" '$1 == p { print $2 }' "$work/cpu.after")
  name=$(basename "$(tr '\0' '\n' <"/proc/$pid/cmdline" | head -1)")
  python3 -c "print(f'  {\"$name\":14} pid $pid: {($after - $before) * 1000 / $(getconf CLK_TCK) / max($requests, 1):.3f}')"
done <"$work/cpu.before"
echo "Mean latency during the run (ms), from the histograms (0 = router, 1.. = shards):"
python3 - "$work/metrics.before" "$work/metrics.after" <<'PY'
import sys
def load(path):
    rows = (line.split() for line in open(path))
    return {(proc, key): float(value) for proc, key, value in rows}
a, b = load(sys.argv[1]), load(sys.argv[2])
for (proc, key), total in sorted(b.items()):
    if not key.split("{")[0].endswith("_sum"):
        continue
    ckey = key.replace("_sum", "_count", 1)
    n = b.get((proc, ckey), 0) - a.get((proc, ckey), 0)
    if n > 0:
        print(f"  {proc} {key}: {(total - a.get((proc, key), 0)) / n * 1000:.3f} over {n:.0f}")
PY
kill "$cluster_pid" && wait "$cluster_pid" 2>/dev/null || true
cluster_pid=""
if [[ "$MODE" == search-text ]]; then
  echo "The same titles embedded bare, one at a time, one intra-op thread:"
  target/release/vitrine-embedbench --titles "$texts" --n 1200 --batch 1 --threads 1
fi
