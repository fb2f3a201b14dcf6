"""The Dockerfile builds what the chart runs: no image can be built here, so
these check it statically against the chart and scripts/fetch-models.sh
(tests/python/test_image_layout.py runs the same layout for real)."""

from __future__ import annotations

import re
import shlex
from pathlib import PurePosixPath

import pytest

import chartlib
import dockerfile_layout as dl
from conftest import containers, effective_env, one, workloads

ROOT = chartlib.REPO_ROOT


@pytest.fixture(scope="module")
def stages():
    return dl.stages()


def test_two_stages(stages):
    builder, runtime = stages
    assert builder.name == "builder" and builder.base.startswith("rust:")
    assert runtime.base.startswith("debian:") and runtime.base.endswith("-slim")


def test_builder_builds_locked_release_and_fetches_models(stages):
    runs = " ".join(stages[0].all("RUN"))
    assert "cargo build --release --locked --bins" in runs
    assert "bash scripts/fetch-models.sh" in runs


def test_runtime_is_non_root_like_the_chart(stages, default_objs):
    (user,) = stages[-1].all("USER")
    uid, _, gid = user.partition(":")
    for w in workloads(default_objs):
        psc = w["spec"]["template"]["spec"]["securityContext"]
        assert (int(uid), int(gid)) == (psc["runAsUser"], psc["runAsGroup"])


def test_chart_commands_are_in_the_image(stages, default_objs):
    in_image = {dest for _, dest in dl.image_files(stages[-1], ROOT / "target" / "release")}
    for w in workloads(default_objs):
        for c in containers(w):
            (cmd,) = c["command"][:1]
            assert f"/usr/local/bin/{cmd}" in in_image, cmd


def test_chart_model_paths_match_the_image(stages, default_objs):
    runtime = stages[-1]
    env = dl.env_defaults(runtime)
    (shard,) = [c for w in workloads(default_objs) for c in containers(w) if c["name"] == "shard"]
    chart_env = effective_env(default_objs, shard)
    for key in ("VITRINE_SHARD_MODEL_DIR", "VITRINE_SHARD_ORT_LIB", "VITRINE_SHARD_DATA_DIR"):
        assert chart_env[key] == env[key], key
    # ... and they lie inside what the runtime stage copies in.
    copied_dirs = [dest for src, dest in dl.copies_from_builder(runtime) if src.endswith("/")]
    for key in ("VITRINE_SHARD_MODEL_DIR", "VITRINE_SHARD_ORT_LIB"):
        assert any(PurePosixPath(chart_env[key]).is_relative_to(d) for d in copied_dirs), key


def test_ort_version_matches_fetch_script(default_objs):
    script = (ROOT / "scripts" / "fetch-models.sh").read_text()
    (version,) = re.findall(r"^ORT_VERSION=(\S+)$", script, re.MULTILINE)
    cm = one(default_objs, "ConfigMap", f"{chartlib.RELEASE}-config")["data"]
    assert cm["VITRINE_SHARD_ORT_LIB"].endswith(f"/libonnxruntime.so.{version}")
    assert "all-minilm-l6-v2" in script and cm["VITRINE_SHARD_MODEL_DIR"].endswith("/all-minilm-l6-v2")


def test_dockerignore_keeps_build_inputs_and_drops_caches():
    patterns = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines()
                if l.strip() and not l.startswith("#")]
    for must in (".git", "target", ".cache"):
        assert must in patterns, must
    cargo = (ROOT / "Cargo.toml").read_text()
    members = re.search(r"members\s*=\s*\[(.*?)\]", cargo, re.S).group(1)
    needed = [m.strip().strip('"') for m in members.split(",") if m.strip()]
    needed += ["Cargo.toml", "Cargo.lock", "scripts", "demo"]
    for path in needed:
        assert not any(path == p.rstrip("/") or path.startswith(p.rstrip("/") + "/") for p in patterns), path


def test_layout_parser_sees_every_copy(stages):
    """Every runtime COPY comes from the builder and maps to a local path
    (the layout test depends on it)."""
    for arg in stages[-1].all("COPY"):
        assert "--from=builder" in shlex.split(arg), arg
    files = dl.image_files(stages[-1], ROOT / "target" / "release")
    dests = {d for _, d in files}
    assert {"/usr/local/bin/vitrine-router", "/usr/local/bin/vitrine-shard", "/opt/vitrine/models"} <= dests
