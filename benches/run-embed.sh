#!/usr/bin/env bash
# Text embedding: the shard's Rust path against Python onnxruntime, in one
# run, on the same model file, tokenizer, thread count and 2,000 real titles.
# Both pad each batch to the longest title in it.
# Usage: bash benches/run-embed.sh [THREADS]
set -euo pipefail
threads="${1:-2}"
source "$(dirname "$0")/peers/setup.sh"
bench_setup vitrine-embedbench numpy==2.3.5 onnxruntime==1.31.1 tokenizers==0.22.2
titles="$(mktemp)"
awk -F"\t" 'NR > 1 && NR <= 2001 { print $2 }' "$data/fashion-products/catalog-text-full.tsv" >"$titles"
out="$(mktemp)"
target/release/vitrine-embedbench --titles "$titles" --threads "$threads" | tee -a "$out"
"$venv/bin/python" benches/peers/onnxruntime_embed.py --titles "$titles" --threads "$threads" | tee -a "$out"
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
v = {r["batch"]: r for r in rows if r["engine"].startswith("vitrine")}
p = {r["batch"]: r for r in rows if r["engine"].startswith("python")}
print(f"\n{rows[0]['n']} titles, {rows[0]['threads']} intra-op threads")
print("| batch | Vitrine titles/s | Vitrine batch p50 | Python ORT titles/s | Python ORT batch p50 | ratio (Vitrine/Python) |")
print("|---|---|---|---|---|---|")
for b in sorted(v):
    if b in p:
        print(f"| {b} | {v[b]['per_s']} | {v[b]['batch_p50_ms']} ms | {p[b]['per_s']} | {p[b]['batch_p50_ms']} ms | {v[b]['per_s']/p[b]['per_s']:.2f} |")
PY
rm -f "$titles" "$out"
