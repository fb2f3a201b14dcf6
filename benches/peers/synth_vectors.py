"""Writes N unit vectors for the scale benchmarks: the real MiniLM title
vectors first, then synthetic ones drawn around them (a random real vector
plus isotropic Gaussian noise, renormalised, cosine about 0.8 to its source),
so that the cluster structure of real titles is kept when the catalogue is
larger than the titles we have.

Usage: synth_vectors.py --base base.f32 --dim 384 --n 100000 --out out.f32
"""
import argparse

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=42)
    # Noise norm relative to the unit source vector; 0.75 gives cos ~0.8.
    ap.add_argument("--noise", type=float, default=0.75)
    a = ap.parse_args()
    base = np.fromfile(a.base, dtype="<f4").reshape(-1, a.dim)
    rng = np.random.default_rng(a.seed)
    with open(a.out, "wb") as out:
        real = base[: a.n]
        real.astype("<f4").tofile(out)
        left = a.n - len(real)
        while left > 0:
            m = min(left, 50_000)
            src = base[rng.integers(0, len(base), m)]
            noise = rng.standard_normal((m, a.dim)).astype(np.float32)
            noise *= a.noise / np.linalg.norm(noise, axis=1, keepdims=True)
            v = src + noise
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            v.astype("<f4").tofile(out)
            left -= m


if __name__ == "__main__":
    main()
