#!/usr/bin/env bash
# The whole benchmark suite in one command, in the order docs/PERFORMANCE.md
# reports it:
#   1. the index against hnswlib, usearch and faiss-cpu (titles and GloVe,
#      1 and 2 search threads; benches/run-ann.sh);
#   2. text and image embedding against Python onnxruntime
#      (benches/run-embed.sh);
#   3. the cluster under load: 1, 2 and 4 shards at 10k and 100k items,
#      Search by vector, Recommend, and search by text against the bare
#      embedding of the same titles (benches/run-e2e.sh);
#   4. with --scale-1m, 2 shards at 1M items (seeding alone takes about
#      20 minutes on 2 cores).
# Parts 1-3 took 28 minutes on 2 cores (2026-11-30, one run as a whole).
# Run nothing else meanwhile:
# the parts measure speed on a shared machine. Every part prints its own
# tables; the whole output is also kept in .cache/bench/run-all-<time>.log.
#
# Usage: bash benches/run-all.sh [--scale-1m]
set -euo pipefail
cd "$(dirname "$0")/.."
scale=""
case "${1:-}" in
  --scale-1m) scale=1 ;;
  "") ;;
  *) sed -n 2,18p "$0"; exit 2 ;;
esac
mkdir -p .cache/bench
log=".cache/bench/run-all-$(date +%Y%m%dT%H%M%S).log"
{
  bash benches/run-ann.sh --dataset both --threads 1,2
  bash benches/run-embed.sh
  bash benches/run-e2e.sh 1,2,4 10000,100000 10
  if [[ -n "$scale" ]]; then
    bash benches/run-e2e.sh 2 1000000 10
  fi
} 2>&1 | tee "$log"
echo "the whole output: $log"
