#!/usr/bin/env bash
# ANN benchmark: Vitrine's shard index (hnsw_rs behind VectorIndex, and its
# flattened read-only copy from shard/src/flat.rs) against hnswlib, in one
# run, on the same real vectors (MiniLM embeddings of product titles from
# ../shared/data), the same M / ef_construction / ef grid, one thread each,
# ground truth by brute force. Prints a table with QPS ratios.
# Usage: bash benches/run-ann.sh [M] [EF_CONSTRUCTION]
set -euo pipefail
M="${1:-16}"
EFC="${2:-200}"
source "$(dirname "$0")/peers/setup.sh"
bench_setup vitrine-annbench numpy==2.3.5 hnswlib==0.8.0

dir="$root/.cache/bench/titles-minilm"
if [[ ! -f "$dir/meta.json" ]]; then
  titles="$(mktemp)"
  tail -n +2 "$data/fashion-products/catalog-text-full.tsv" | cut -f2 >"$titles"
  tail -n +2 "$data/amazon-beauty/items.tsv" | cut -f3 >>"$titles"
  target/release/vitrine-annbench embed --titles "$titles" --out "$dir"
  rm -f "$titles"
fi

out="$(mktemp)"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
target/release/vitrine-annbench search --dir "$dir" --m "$M" --ef-construction "$EFC" | tee -a "$out"
"$venv/bin/python" benches/peers/hnswlib_bench.py --dir "$dir" --m "$M" --ef-construction "$EFC" | tee -a "$out"
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
engines = list(dict.fromkeys(r["engine"] for r in rows if r["engine"].startswith("vitrine")))
h = {r["ef"]: r for r in rows if r["engine"] == "hnswlib"}
first = next(r for r in rows if r["engine"].startswith("vitrine"))
flat = next((r for r in rows if "flatten_s" in r), None)
flatten = f" (+ {flat['flatten_s']} s to flatten)" if flat else ""
hbuild = next(iter(h.values()))["build_s"] if h else "n/a"
print(f"\nn={first['n']} M={first['m']} efC={first['ef_construction']}; build: vitrine {first['build_s']} s{flatten}, hnswlib {hbuild} s")
print("| engine | ef | vitrine recall@10 | vitrine QPS | hnswlib recall@10 | hnswlib QPS | QPS ratio (vitrine/hnswlib) |")
print("|---|---|---|---|---|---|---|")
for engine in engines:
    v = {r["ef"]: r for r in rows if r["engine"] == engine}
    for ef in sorted(v):
        a, b = v[ef], h.get(ef)
        if b:
            print(f"| {engine} | {ef} | {a['recall']:.3f} | {a['qps']} | {b['recall']:.3f} | {b['qps']} | {a['qps']/b['qps']:.2f} |")
PY
