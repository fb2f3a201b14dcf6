#!/usr/bin/env bash
# The main job: fetch the model, build, start a local cluster (a router and
# two shards, each its own process), load the demo catalogue and print real
# answers. The cluster stays up until Ctrl-C; pass --exit-after-demo to stop
# after the demo. Extra arguments go to `vitrine cluster` (see --help).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash scripts/fetch-models.sh
cargo build --release --locked --bins
exec target/release/vitrine cluster "$@"
