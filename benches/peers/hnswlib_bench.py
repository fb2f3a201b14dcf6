"""hnswlib on the vectors `vitrine-annbench embed` wrote: same M,
ef_construction, ef grid, one thread, the same ground truth. Prints one JSON
line per ef, in the same shape as `vitrine-annbench search`."""
import argparse
import json
import time
from pathlib import Path

import hnswlib
import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("--dir", required=True)
ap.add_argument("--m", type=int, default=16)
ap.add_argument("--ef-construction", type=int, default=200)
ap.add_argument("--ef", default="10,16,32,64,128,256")
a = ap.parse_args()
d = Path(a.dir)
meta = json.loads((d / "meta.json").read_text())
dim, k = meta["dim"], meta["k"]
base = np.fromfile(d / "base.f32", dtype="<f4").reshape(-1, dim)
queries = np.fromfile(d / "queries.f32", dtype="<f4").reshape(-1, dim)
gt = np.fromfile(d / "gt.u32", dtype="<u4").reshape(-1, k)

index = hnswlib.Index(space="ip", dim=dim)
index.init_index(max_elements=len(base), M=a.m, ef_construction=a.ef_construction, random_seed=1)
index.set_num_threads(1)
t = time.perf_counter()
index.add_items(base, np.arange(len(base)))
build_s = time.perf_counter() - t
for ef in [int(x) for x in a.ef.split(",")]:
    index.set_ef(max(ef, k))
    t = time.perf_counter()
    found = 0
    # One query per call, as a server answers them.
    for qi in range(len(queries)):
        labels, _ = index.knn_query(queries[qi : qi + 1], k=k)
        found += len(set(labels[0].tolist()) & set(gt[qi].tolist()))
    secs = time.perf_counter() - t
    print(json.dumps({"engine": "hnswlib", "n": len(base), "m": a.m, "ef_construction": a.ef_construction,
                      "ef": ef, "recall": round(found / (len(queries) * k), 4),
                      "qps": round(len(queries) / secs), "build_s": round(build_s, 2)}))
