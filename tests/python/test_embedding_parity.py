"""The shards' Rust embedding path against Python onnxruntime.

The same model file and tokenizer.json are run in Python the way
sentence-transformers does it (`benches/peers/onnxruntime_embed.py`): pad to
the batch's longest input, truncate at 256 tokens, mean-pool over the
attention mask, L2-normalise. 100 real
product titles go into the cluster through the public API, and their stored
vectors come back with GetItems(with_vectors). Each must match the Python
vector to within 1e-4 in every component.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from vitrine.v1 import vitrine_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / ".cache/models/all-minilm-l6-v2"
DATA = Path(os.environ.get("VITRINE_SHARED_DATA", ROOT.parent / "shared/data"))
TOLERANCE = 1e-4


def _titles(n: int) -> list[str]:
    path = DATA / "fashion-products/catalog.tsv"
    if not path.is_file():
        pytest.skip(f"{path} not found: the parity test needs real titles")
    seen, out = set(), []
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        title = line.split("\t")[1].strip()
        if title and title not in seen:
            seen.add(title)
            out.append(title)
        if len(out) == n:
            break
    return out


def _python_reference(texts: list[str]) -> np.ndarray:
    # The same reference the embedding benchmark runs against.
    sys.path.insert(0, str(ROOT / "benches/peers"))
    from onnxruntime_embed import reference_embedder

    embed = reference_embedder(str(MODEL_DIR), threads=1)
    return np.concatenate([embed(texts[i : i + 32]) for i in range(0, len(texts), 32)])


def test_rust_vectors_match_python_onnxruntime(cluster):
    titles = _titles(100)
    assert len(titles) == 100
    items = [pb.Item(id=f"parity-{i:03d}", title=t) for i, t in enumerate(titles)]
    resp = cluster.stub.UpsertItems(pb.UpsertItemsRequest(items=items), timeout=120)
    assert resp.upserted == 100 and resp.embedded == 100
    got = cluster.stub.GetItems(
        pb.GetItemsRequest(ids=[it.id for it in items], with_vectors=True), timeout=30
    )
    assert not got.missing
    by_id = {it.id: np.array(it.vector.values, dtype=np.float32) for it in got.items}
    rust = np.stack([by_id[it.id] for it in items])
    python = _python_reference(titles)
    assert rust.shape == python.shape == (100, 384)
    diff = np.abs(rust - python).max(axis=1)
    worst = int(diff.argmax())
    print(f"max |rust - python| over 100 titles: {diff.max():.2e} (title {titles[worst]!r})")
    assert diff.max() < TOLERANCE, f"{titles[worst]!r} differs by {diff[worst]:.2e}"
    # Sanity: the vectors are not all alike (a constant output would match trivially).
    assert float((rust @ rust.T).min()) < 0.5
