"""The peer ANN libraries on the vectors `vitrine-annbench` reads: hnswlib,
usearch and faiss-cpu HNSW, with the same M, ef_construction, ef grid,
thread counts and ground truth. Prints one JSON line per engine, search
thread count and ef, in the shape `vitrine-annbench search` prints
(`benches/ann.rs`, struct `Line`), so `ann_summary.py` treats all engines
alike.

All three index unit vectors by inner product (distance 1 - dot), as
Vitrine does: hnswlib space "ip", usearch metric "ip" with f32 storage (its
default may quantise), faiss IndexHNSWFlat with METRIC_INNER_PRODUCT.

Threads. The index is built with --build-threads threads (each library's
own parallel add). Searching has two modes:

- batch (default): all queries in one call, the library spreading them over
  N threads of its own (hnswlib knn_query num_threads, usearch search
  threads, faiss through OpenMP). Python runs once per pass, so what is
  timed is the library, as the Rust side times Vitrine without an
  interpreter in between.
- calls: one query per call, as a server answers them, from N Python
  threads. It charges Python's per-call cost to the peer (the mode of the
  earlier single-thread comparison), and scales past one thread only as far
  as the library releases the GIL while it searches. hnswlib, faiss and
  usearch's batch search do (a second Python thread keeps running through a
  long search call); even so, on 2 cores two calling threads were slower
  than one at small ef, where the per-call Python work and GIL hand-offs
  cost more than the search, and usearch did not gain at ef=64 either.

Memory. Each engine runs in its own process (`--engine all` starts one per
engine), so the growth of the resident set across the build (/proc/self/statm)
is that engine's index and not memory an earlier engine freed to the
allocator. usearch also reports its own size (`memory_usage`); hnswlib and
faiss do not, so theirs is null.
"""

import argparse
import gc
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ENGINES = ("hnswlib", "usearch", "faiss")


def rss_bytes() -> int:
    """Resident set of this process: statm's second field, in pages."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Hnswlib:
    name = "hnswlib"

    def __init__(self, dim, n, m, ef_construction):
        import hnswlib

        self.index = hnswlib.Index(space="ip", dim=dim)
        self.index.init_index(max_elements=n, M=m, ef_construction=ef_construction, random_seed=1)

    def build(self, base, threads):
        self.index.add_items(base, np.arange(len(base)), num_threads=threads)

    def index_bytes(self):
        return None

    def set_ef(self, ef):
        self.index.set_ef(ef)

    def search_batch(self, queries, k, threads):
        labels, _ = self.index.knn_query(queries, k=k, num_threads=threads)
        return labels

    def search_one(self, query, k):
        labels, _ = self.index.knn_query(query[None, :], k=k, num_threads=1)
        return labels[0]


class Usearch:
    name = "usearch"

    def __init__(self, dim, n, m, ef_construction):
        from usearch.index import Index

        # usearch grows its own capacity during add(); n is not needed.
        self.index = Index(ndim=dim, metric="ip", dtype="f32", connectivity=m, expansion_add=ef_construction)

    def build(self, base, threads):
        self.index.add(np.arange(len(base), dtype=np.uint64), base, threads=threads)

    def index_bytes(self):
        return int(self.index.memory_usage)

    def set_ef(self, ef):
        self.index.expansion_search = ef

    def search_batch(self, queries, k, threads):
        return self.index.search(queries, k, threads=threads).keys.astype(np.int64)

    def search_one(self, query, k):
        return self.index.search(query, k, threads=1).keys.astype(np.int64)


class Faiss:
    name = "faiss"

    def __init__(self, dim, n, m, ef_construction):
        import faiss

        self.faiss = faiss
        self.index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = ef_construction

    def build(self, base, threads):
        self.faiss.omp_set_num_threads(threads)
        self.index.add(base)

    def index_bytes(self):
        return None

    def set_ef(self, ef):
        self.index.hnsw.efSearch = ef

    def search_batch(self, queries, k, threads):
        # OpenMP thread counts are per calling thread; batch calls come from
        # the main thread.
        self.faiss.omp_set_num_threads(threads)
        _, labels = self.index.search(queries, k)
        return labels

    def search_one(self, query, k):
        _, labels = self.index.search(query[None, :], k)
        return labels[0]

    def prepare_caller(self):
        """Called on each Python search thread: one query per call needs no
        OpenMP team, and a new thread would otherwise get the default (all
        cores)."""
        self.faiss.omp_set_num_threads(1)


def recall_hits(labels, truth):
    """How many of each row's ids are in the same row of `truth`."""
    labels = np.asarray(labels).reshape(len(truth), -1)
    return int((labels[:, :, None] == truth[:, None, :]).any(axis=2).sum())


def batch_pass(engine, queries, k, threads):
    """All queries in one call; returns (labels, seconds)."""
    # Untimed warm-up, as each Rust search thread runs one query first.
    engine.search_batch(queries[:threads], k, threads)
    t = time.perf_counter()
    labels = engine.search_batch(queries, k, threads)
    return labels, time.perf_counter() - t


def calls_pass(engine, queries, k, threads):
    """Query i on Python thread i % threads, one query per call; returns
    (labels, seconds from the first thread's start to the last one's end).
    Each thread runs one untimed query, waits until all are ready and reads
    the clock itself, as `pass` in benches/ann.rs does."""
    labels = np.full((len(queries), k), -1, dtype=np.int64)
    ready = threading.Barrier(threads)
    spans = [None] * threads

    def work(t):
        getattr(engine, "prepare_caller", lambda: None)()
        engine.search_one(queries[t % len(queries)], k)
        ready.wait()
        started = time.perf_counter()
        for qi in range(t, len(queries), threads):
            row = engine.search_one(queries[qi], k)
            labels[qi, : len(row)] = row
        spans[t] = (started, time.perf_counter())

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if any(span is None for span in spans):
        raise RuntimeError("a search thread failed")
    return labels, max(end for _, end in spans) - min(start for start, _ in spans)


def measure(one_pass, engine, queries, gt, k, threads, min_seconds):
    """(recall hits of the first pass, queries per second), repeating whole
    passes until they took `min_seconds` together, as `measure` in
    benches/ann.rs does."""
    labels, secs = one_pass(engine, queries, k, threads)
    passes = 1
    while secs < min_seconds:
        secs += one_pass(engine, queries, k, threads)[1]
        passes += 1
    return recall_hits(labels, gt), passes * len(queries) / secs


def run_engine(name, a):
    d = Path(a.dir)
    meta = json.loads((d / "meta.json").read_text())
    dim, k = meta["dim"], meta["k"]
    base = np.fromfile(d / "base.f32", dtype="<f4").reshape(-1, dim)
    queries = np.fromfile(d / "queries.f32", dtype="<f4").reshape(-1, dim)
    gt = np.fromfile(d / "gt.u32", dtype="<u4").reshape(-1, k).astype(np.int64)
    if len(base) != meta["n"] or len(queries) != meta["queries"] or len(gt) != len(queries):
        sys.exit(f"{d}: files do not match meta.json")

    engine_class = {"hnswlib": Hnswlib, "usearch": Usearch, "faiss": Faiss}[name]
    gc.collect()
    rss_before = rss_bytes()
    engine = engine_class(dim, len(base), a.m, a.ef_construction)
    t = time.perf_counter()
    engine.build(base, a.build_threads)
    build_s = time.perf_counter() - t
    rss_grown = rss_bytes() - rss_before
    index_bytes = engine.index_bytes()

    one_pass = batch_pass if a.mode == "batch" else calls_pass
    label = name if a.mode == "batch" else f"{name} (calls)"
    for threads in [int(x) for x in a.threads.split(",")]:
        for ef in [int(x) for x in a.ef.split(",")]:
            engine.set_ef(max(ef, k))
            found, qps = measure(one_pass, engine, queries, gt, k, threads, a.min_seconds)
            line = {
                "engine": label,
                "dataset": d.name,
                "n": len(base),
                "dim": dim,
                "m": a.m,
                "ef_construction": a.ef_construction,
                "ef": ef,
                "threads": threads,
                "build_threads": a.build_threads,
                "recall": round(found / (len(queries) * k), 4),
                "qps": round(qps),
                "build_s": round(build_s, 2),
                "rss_bytes": rss_grown,
                "index_bytes": index_bytes,
            }
            print(json.dumps(line), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True, help="a directory written by vitrine-annbench embed or ann_data.py")
    ap.add_argument("--engine", default="all", choices=ENGINES + ("all",))
    ap.add_argument("--m", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--ef", default="10,16,32,64,128,256")
    ap.add_argument("--threads", default="1", help="search thread counts, comma-separated")
    ap.add_argument("--build-threads", type=int, default=1)
    ap.add_argument("--mode", default="batch", choices=("batch", "calls"))
    ap.add_argument("--min-seconds", type=float, default=0.3, help="repeat passes until they took this long")
    a = ap.parse_args()
    if a.engine != "all":
        run_engine(a.engine, a)
        return
    # One process per engine: see the module docs (memory). The last
    # --engine on a command line wins, so the child runs just `name`.
    for name in ENGINES:
        subprocess.run([sys.executable, __file__, *sys.argv[1:], "--engine", name], check=True)


if __name__ == "__main__":
    main()
