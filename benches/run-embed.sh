#!/usr/bin/env bash
# Embedding: the shard's Rust paths against Python onnxruntime, in one run, on
# the same model files, thread count and real inputs.
# 1. Text: 2,000 real titles, batches of 1, 8, 32 (both pad each batch to the
#    longest title in it); then the same titles served to 32 concurrent
#    single-title clients through the shard's dynamic batcher.
# 2. Images: 512 real product photos through the test ViT: decode + resize +
#    crop + normalise per image, then the model at batches of 1, 8, 32.
# Usage: bash benches/run-embed.sh [THREADS] [CLIENTS]
set -euo pipefail
threads="${1:-2}"
clients="${2:-32}"
source "$(dirname "$0")/peers/setup.sh"
bench_setup vitrine-embedbench numpy==2.3.5 onnxruntime==1.31.1 tokenizers==0.22.2 pillow==12.0.0
titles="$(mktemp)"
awk -F"\t" 'NR > 1 && NR <= 2001 { print $2 }' "$data/fashion-products/catalog-text-full.tsv" >"$titles"
out="$(mktemp)"
target/release/vitrine-embedbench --titles "$titles" --threads "$threads" --served "$clients" | tee -a "$out"
"$venv/bin/python" benches/peers/onnxruntime_embed.py --titles "$titles" --threads "$threads" | tee -a "$out"
images="$data/fashion-products/images"
target/release/vitrine-embedbench --images "$images" --n 512 --threads "$threads" | tee -a "$out"
"$venv/bin/python" benches/peers/onnxruntime_image.py --images "$images" --n 512 --threads "$threads" | tee -a "$out"
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
text = [r for r in rows if "stage" not in r]
v = {r["batch"]: r for r in text if r["engine"].startswith("vitrine (")}
p = {r["batch"]: r for r in text if r["engine"].startswith("python")}
print(f"\nText: {text[0]['n']} titles, {text[0]['threads']} intra-op threads")
print("| batch | Vitrine titles/s | Vitrine batch p50 | Python ORT titles/s | Python ORT batch p50 | ratio (Vitrine/Python) |")
print("|---|---|---|---|---|---|")
for b in sorted(v):
    if b in p:
        print(f"| {b} | {v[b]['per_s']} | {v[b]['batch_p50_ms']} ms | {p[b]['per_s']} | {p[b]['batch_p50_ms']} ms | {v[b]['per_s']/p[b]['per_s']:.2f} |")
best = max(v.values(), key=lambda r: r["per_s"])
for s in (r for r in text if r["engine"].startswith("vitrine served")):
    print(f"\nServed: {s['clients']} clients, one title each at a time, batcher max {s['max_batch']}: "
          f"{s['per_s']} titles/s = {s['per_s']/best['per_s']:.2f} of the best offline rate ({best['per_s']} at batch {best['batch']}); "
          f"p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms, mean batch {s['mean_batch']}")
img = [r for r in rows if "stage" in r]
pre = {r["engine"].split()[0]: r for r in img if r["stage"] == "preprocess"}
print(f"\nImages: {img[0]['n']} photos, {v[1]['threads']} intra-op threads")
print(f"preprocess (decode, EXIF, resize, crop, normalise) per image: Vitrine {pre['vitrine']['ms_per_image']} ms, "
      f"Python Pillow {pre['python']['ms_per_image']} ms (one thread each)")
mv = {r["batch"]: r for r in img if r["stage"] == "model" and r["engine"].startswith("vitrine")}
mp = {r["batch"]: r for r in img if r["stage"] == "model" and r["engine"].startswith("python")}
print("| batch | Vitrine images/s (model) | batch p50 | Python ORT images/s | batch p50 | ratio |")
print("|---|---|---|---|---|---|")
for b in sorted(mv):
    if b in mp:
        print(f"| {b} | {mv[b]['per_s']} | {mv[b]['batch_p50_ms']} ms | {mp[b]['per_s']} | {mp[b]['batch_p50_ms']} ms | {mv[b]['per_s']/mp[b]['per_s']:.2f} |")
PY
rm -f "$titles" "$out"
