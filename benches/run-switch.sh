#!/usr/bin/env bash
# Switching the text model version while serving (`vitrine models switch`):
# a local release cluster (2 shards) holding N real product titles serves
# text searches at a fixed rate; the same load runs once without a switch
# and once with the switch from all-MiniLM-L6-v2@1 (mean pooling) to @2 (CLS
# pooling: another vector space of the same dimension) in the middle. Prints
# the load generator's summaries (answers, errors, p50/p99) and each phase's
# report per replica (items re-embedded, milliseconds).
#
# Usage: bash benches/run-switch.sh [ITEMS=5000] [RATE=40] [SECONDS=30]
set -euo pipefail
ITEMS="${1:-5000}"
RATE="${2:-40}"
SECS="${3:-30}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
source benches/peers/setup.sh
catalog="$root/../shared/data/fashion-products/catalog-text-full.tsv"
[[ -f "$catalog" ]] || { echo "needs $catalog (../shared/data)" >&2; exit 1; }
[[ -d .cache/models/all-minilm-l6-v2 ]] || bash scripts/fetch-models.sh
cargo build --release --locked --bins

bench_workdir
model="$root/.cache/models/all-minilm-l6-v2"
cat >"$work/models.json" <<JSON
{"models": [
  {"name": "all-MiniLM-L6-v2", "version": "1", "kind": "text", "dir": "$model", "pooling": "mean"},
  {"name": "all-MiniLM-L6-v2", "version": "2", "kind": "text", "dir": "$model", "pooling": "cls"}],
 "serve": {"text": "all-MiniLM-L6-v2@1"}}
JSON
python3 - "$catalog" "$ITEMS" "$work/items.jsonl" <<'PY'
import csv, json, sys
src, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(src) as f, open(out, "w") as o:
    for i, r in enumerate(csv.DictReader(f, delimiter="\t")):
        if i >= n:
            break
        o.write(json.dumps({"id": r["id"], "title": r["name"], "category": r["articleType"]}) + "\n")
PY

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
port=57051
addr="http://127.0.0.1:$port"
VITRINE_SHARD_MODELS="$work/models.json" target/release/vitrine cluster --shards 2 --no-demo --port "$port" \
  --data-dir "$work/data" >"$work/cluster.log" 2>&1 &
cluster_pid=$!
wait_for_cluster "$work/cluster.log" "$cluster_pid"
t0=$(date +%s.%N)
target/release/vitrine --addr "$addr" load "$work/items.jsonl" >/dev/null
echo "loaded $ITEMS titles in $(echo "$(date +%s.%N) - $t0" | bc) s"

loadgen() {
  target/release/vitrine-loadgen --addr "$addr" --mode search-text --rate "$RATE" --concurrency 8 --duration "$SECS"
}
echo "== text search at $RATE/s for $SECS s, no switch"
loadgen
echo "== the same, switching to all-MiniLM-L6-v2@2 after 5 s"
loadgen >"$work/during.txt" &
gen=$!
sleep 6
target/release/vitrine --addr "$addr" --json models switch --text-model all-MiniLM-L6-v2@2 >"$work/switch.json"
wait "$gen"
cat "$work/during.txt"
python3 - "$work/switch.json" <<'PY'
import json, sys
for p in json.load(open(sys.argv[1]))["phases"]:
    rows = ", ".join(f"shard {s['shard']}: {s['reembedded']} re-embedded in {s['elapsed_ms']} ms" for s in p["shards"])
    print(f"{p['phase']}: {rows}")
PY
target/release/vitrine --addr "$addr" info | tail -4
