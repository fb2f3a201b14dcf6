#!/usr/bin/env bash
# A/B of two builds of the cluster on this host: the same loads against a
# cluster of each build in turn (A, B, A, B, ...), each freshly seeded with
# the same vectors, so that drift in the machine's speed hits both alike.
# Hosts differ by up to 2x on these workloads; only ratios within one run
# compare.
#
# Usage: bash benches/run-ab.sh DIR_A DIR_B [ROUNDS=2] [ITEMS=100000] [SECONDS=8]
#   DIR_A, DIR_B: directories holding `vitrine`, `vitrine-router` and
#   `vitrine-shard` of each build, e.g. for the build of a commit:
#     git worktree add /tmp/a <commit> && (cd /tmp/a && cargo build --release --bins) \
#       && mkdir /tmp/bin-a && cp /tmp/a/target/release/vitrine{,-router,-shard} /tmp/bin-a/
#   The load generator is this checkout's.
set -euo pipefail
[[ $# -ge 2 ]] || { sed -n 2,13p "$0"; exit 2; }
a="$(realpath "$1")"
b="$(realpath "$2")"
ROUNDS="${3:-2}"
N="${4:-100000}"
SECS="${5:-8}"
source "$(dirname "$0")/peers/setup.sh"
bench_setup vitrine-loadgen numpy==2.3.5
require_title_vectors
vectors="$root/.cache/bench/e2e-$N.f32"
[[ -f "$vectors" ]] || "$venv/bin/python" benches/peers/synth_vectors.py --base "$dir/base.f32" --n "$N" --out "$vectors"

bench_workdir
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
port=58051
for round in $(seq 1 "$ROUNDS"); do
  for variant in A B; do
    bin="$a"
    [[ "$variant" == B ]] && bin="$b"
    "$bin/vitrine" cluster --shards 2 --no-demo --port "$port" --data-dir "$work/data" >"$work/cluster.log" 2>&1 &
    cluster_pid=$!
    wait_for_cluster "$work/cluster.log" "$cluster_pid"
    addr="http://127.0.0.1:$port"
    # Each run's line gets the CPU time the router and shards spent per
    # request (user + system, from /proc): at a fixed rate this compares
    # the builds' cost per request with far less noise than closed-loop QPS.
    lg() {
      local before after line requests
      before=$(cluster_cpu_ticks)
      line=$(target/release/vitrine-loadgen --addr "$addr" --duration "$SECS" "$@")
      after=$(cluster_cpu_ticks)
      requests=$(sed -n 's/.* requests=\([0-9]*\).*/\1/p' <<<"$line")
      echo "round=$round build=$variant $line cpu_ms_per_req=$(python3 -c "print(f'{($after - $before) * 1000 / $(getconf CLK_TCK) / max(${requests:-0}, 1):.3f}')")" \
        | tee -a "$work/results.txt"
    }
    target/release/vitrine-loadgen --addr "$addr" --duration 0 --concurrency 1 --seed-items "$N" --seed-from "$vectors" >/dev/null
    lg --mode search-vector --concurrency 1 --queries "$dir/queries.f32"
    lg --mode search-vector --concurrency 8 --queries "$dir/queries.f32"
    lg --mode search-vector --concurrency 8 --rate 800 --queries "$dir/queries.f32"
    lg --mode recommend --concurrency 1 --items "$N"
    lg --mode recommend --concurrency 8 --items "$N"
    lg --mode recommend --concurrency 8 --rate 500 --items "$N"
    kill "$cluster_pid" && wait "$cluster_pid" 2>/dev/null || true
    cluster_pid=""
    rm -rf "$work/data"
    port=$((port + 100))
  done
done

python3 - "$work/results.txt" <<'PY'
import re, sys
from collections import defaultdict
rows = [dict(re.findall(r"(\S+?)=(\S+)", l)) for l in open(sys.argv[1])]
runs = defaultdict(list)
for r in rows:
    offered = f"closed loop, {r['concurrency']} in flight" if r["rate"] == "max" else f"{r['rate']} req/s"
    runs[(r["mode"], offered)].append(r)
print("\n| workload | offered | build | round | QPS | p50 | p99 | p99.9 | cluster CPU ms/request |")
print("|---|---|---|---|---|---|---|---|---|")
for (mode, offered), rs in runs.items():
    for r in rs:
        print(f"| {mode} | {offered} | {r['build']} | {r['round']} | {float(r['qps']):,.0f} | {r['p50']} | {r['p99']} | {r['p99.9']} | {r['cpu_ms_per_req']} |")
    mean = lambda key, v: (lambda xs: sum(xs) / len(xs) if xs else None)([float(r[key]) for r in rs if r["build"] == v])
    if mean("qps", "A") and mean("qps", "B"):
        print(f"| {mode} | {offered} | B/A mean | | {mean('qps', 'B') / mean('qps', 'A'):.2f} | | | | {mean('cpu_ms_per_req', 'B') / mean('cpu_ms_per_req', 'A'):.2f} |")
PY
