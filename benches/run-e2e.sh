#!/usr/bin/env bash
# End-to-end and scale benchmark: a local cluster (router + shards as
# separate processes on loopback, release build) loaded with N items, then
# closed-loop and fixed-rate Search-by-vector and Recommend through the
# public gRPC API, for every (shards, items) pair asked for. Vectors: the real
# MiniLM title vectors (written by benches/run-ann.sh), topped up with
# synthetic ones around them (benches/peers/synth_vectors.py) past ~42k.
# Prints one line per run and a markdown table at the end.
#
# Usage: bash benches/run-e2e.sh [SHARDS=1,2,4] [ITEMS=10000,100000] [SECONDS=10]
#   e.g. bash benches/run-e2e.sh 2 100000 10
set -euo pipefail
SHARDS="${1:-1,2,4}"
ITEMS="${2:-10000,100000}"
SECONDS_PER_RUN="${3:-10}"
source "$(dirname "$0")/peers/setup.sh"
bench_setup vitrine-loadgen numpy==2.3.5
cargo build --release --locked --bins

require_title_vectors
bench_workdir
results="$work/results.txt"

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
# Search by text against the bare embedding of the same texts: 4,000
# distinct real titles, sent in order, so the shards' query cache never
# answers; the bare run embeds them one at a time with the shard's default
# of one intra-op thread, before any cluster runs.
texts="$work/texts.txt"
awk -F"\t" 'NR > 1 { print $2 }' "$data/fashion-products/catalog-text-full.tsv" | awk 'NF && !seen[$0]++ && n++ < 4000' >"$texts"
target/release/vitrine-embedbench --titles "$texts" --n 4000 --batch 1 --threads 1 | tee "$work/bare.json"
port=56051
IFS=, read -ra shard_list <<<"$SHARDS"
IFS=, read -ra item_list <<<"$ITEMS"
for n in "${item_list[@]}"; do
  vectors="$root/.cache/bench/e2e-$n.f32"
  [[ -f "$vectors" ]] || "$venv/bin/python" benches/peers/synth_vectors.py --base "$dir/base.f32" --n "$n" --out "$vectors"
  for s in "${shard_list[@]}"; do
    cluster_data="$work/cluster-$s-$n"
    metrics=$((port + 50))
    target/release/vitrine cluster --shards "$s" --no-demo --port "$port" --metrics-port "$metrics" \
      --data-dir "$cluster_data" >"$work/cluster.log" 2>&1 &
    cluster_pid=$!
    wait_for_cluster "$work/cluster.log" "$cluster_pid"
    addr="http://127.0.0.1:$port"
    target/release/vitrine-loadgen --addr "$addr" --duration 0 --concurrency 1 --seed-items "$n" --seed-from "$vectors" >/dev/null
    # Measure the index as it serves once loaded: wait until every shard's
    # flat copy has caught up with the inserts (fewer points waiting than
    # trigger the next copy). During the load, large shards fall behind and
    # walk the slower hnsw_rs graph meanwhile; each shard's copier keeps
    # copying on its own until it has caught up, so no requests are sent
    # while waiting (10 minutes at most).
    settle_start=$(date +%s)
    for i in $(seq 1 600); do
      waiting=0
      for ((j = 0; j < s; j++)); do
        d=$(curl -sf "http://127.0.0.1:$((metrics + 1 + j))/metrics" | awk '/^vitrine_index_delta_points /{print $2}')
        ((${d:-1000000} >= 256)) && waiting=1
      done
      ((waiting == 0)) && break
      sleep 1
    done
    echo "shards=$s items=$n: flat copies caught up $(($(date +%s) - settle_start)) s after the load"
    lg() { target/release/vitrine-loadgen --addr "$addr" --duration "$SECONDS_PER_RUN" "$@" | sed "s/^/shards=$s /" | tee -a "$results"; }
    lg --mode search-vector --concurrency 8 --queries "$dir/queries.f32"
    lg --mode search-vector --concurrency 8 --rate 1000 --queries "$dir/queries.f32"
    lg --mode recommend --concurrency 8 --items "$n"
    lg --mode recommend --concurrency 8 --rate 1000 --items "$n"
    # Text search one at a time: 10 repeated phrases (answered by the query
    # cache), then the distinct titles, compared below with their bare
    # embedding.
    lg --mode search-text --concurrency 1
    lg --mode search-text --concurrency 1 --texts "$texts"
    kill "$cluster_pid" && wait "$cluster_pid" 2>/dev/null || true
    cluster_pid=""
    rm -rf "$cluster_data"
    port=$((port + 100))
  done
done

python3 - "$results" "$work/bare.json" <<'PY'
import json, re, sys
rows = [dict(re.findall(r"(\S+?)=(\S+)", l)) for l in open(sys.argv[1])]
bare = json.loads(open(sys.argv[2]).read())
print("\n| shards | items | workload | offered | QPS | p50 | p99 | p99.9 | errors |")
print("|---|---|---|---|---|---|---|---|---|")
for r in rows:
    offered = f"closed loop, {r['concurrency']} in flight" if r["rate"] == "max" else f"{r['rate']} req/s"
    workload = {"phrases": "SearchText (10 cached phrases)", "file": "SearchText (distinct titles, uncached)"}.get(r["text"], r["mode"])
    print(f"| {r['shards']} | {int(r['items']):,} | {workload} | {offered} | {float(r['qps']):,.0f} | {r['p50']} | {r['p99']} | {r['p99.9']} | {r['errors']} |")
ms = lambda v: float(v.rstrip("ms"))
print(f"\nBare embedding of the same titles, one at a time, 1 intra-op thread: p50 {bare['batch_p50_ms']} ms, p99 {bare['batch_p99_ms']} ms")
for r in rows:
    if r["mode"] == "SearchText" and r["text"] == "file":
        print(f"shards={r['shards']} items={int(r['items']):,}: search by text p99 {r['p99']} = {ms(r['p99']) / bare['batch_p99_ms']:.2f}x the bare p99 "
              f"(p50 {r['p50']} = {ms(r['p50']) / bare['batch_p50_ms']:.2f}x)")
PY
