"""Markdown summary of the JSON lines `vitrine-annbench search` and
`ann_peers.py` print (benches/run-ann.sh collects them in one file).

Engines are whatever the lines name, in order of first appearance; those
whose name starts with "vitrine" are Vitrine's and the rest are peers. Per
data set it prints, for each search thread count, recall@10 and QPS per ef
for every engine and the QPS each engine reaches at recall 0.95 and 0.99
with the ratio of Vitrine's fastest engine at that recall to each peer;
then one table of build time and memory per vector.

QPS at a recall target is interpolated between the two ef values around
it (log QPS linear in recall, since QPS falls roughly geometrically as ef
doubles). An engine already past the target at the smallest ef measured is
shown as a bound (">= QPS at that ef"), one that never reaches it as "-".

Usage: ann_summary.py RESULTS.jsonl
"""

import json
import math
import sys

TARGETS = (0.95, 0.99)


def fmt_int(x):
    return f"{x:,.0f}"


def at_recall(points, target):
    """(qps, is_bound) at `target` along `points` = [(ef, recall, qps)] sorted
    by ef, or None when no ef reaches it."""
    for i, (_, recall, qps) in enumerate(points):
        if recall >= target:
            if i == 0:
                return qps, True
            _, r1, q1 = points[i - 1]
            frac = (target - r1) / (recall - r1)
            return math.exp(math.log(q1) + frac * (math.log(qps) - math.log(q1))), False
    return None


def shown(value):
    if value is None:
        return "-"
    qps, bound = value
    return (">= " if bound else "") + fmt_int(qps)


def main():
    rows = []
    with open(sys.argv[1]) as f:
        for line in f:
            if line.startswith("{"):
                rows.append(json.loads(line))
    if not rows:
        sys.exit("no results to summarise")
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    for dataset in datasets:
        rs = [r for r in rows if r["dataset"] == dataset]
        engines = list(dict.fromkeys(r["engine"] for r in rs))
        ours = [e for e in engines if e.startswith("vitrine")]
        peers = [e for e in engines if not e.startswith("vitrine")]
        first = rs[0]
        print(
            f"\n## {dataset}: n={first['n']:,}, dim={first['dim']}, M={first['m']}, "
            f"ef_construction={first['ef_construction']}, built on {first['build_threads']} thread(s)"
        )
        for threads in sorted(set(r["threads"] for r in rs)):
            by_engine = {
                e: sorted(
                    ((r["ef"], r["recall"], r["qps"]) for r in rs if r["engine"] == e and r["threads"] == threads)
                )
                for e in engines
            }
            efs = sorted(set(r["ef"] for r in rs if r["threads"] == threads))
            print(f"\n### {dataset}, {threads} search thread(s): recall@10 / QPS")
            print("| ef | " + " | ".join(engines) + " |")
            print("|---|" + "---|" * len(engines))
            for ef in efs:
                cells = []
                for e in engines:
                    hit = next((p for p in by_engine[e] if p[0] == ef), None)
                    cells.append(f"{hit[1]:.3f} / {fmt_int(hit[2])}" if hit else "-")
                print(f"| {ef} | " + " | ".join(cells) + " |")

            at = {e: {t: at_recall(by_engine[e], t) for t in TARGETS} for e in engines}
            best = {}
            for t in TARGETS:
                reached = [(at[e][t][0], e) for e in ours if at[e][t] is not None]
                best[t] = max(reached) if reached else None
            print(f"\n### {dataset}, {threads} search thread(s): QPS at a recall target")
            head = " | ".join(f"QPS at recall >= {t}" for t in TARGETS)
            ratios = " | ".join(f"Vitrine best / engine at {t}" for t in TARGETS)
            print(f"| engine | {head} | {ratios} |")
            print("|---|" + "---|" * (2 * len(TARGETS)))
            for e in engines:
                cells = [shown(at[e][t]) for t in TARGETS]
                for t in TARGETS:
                    if best[t] is None or at[e][t] is None:
                        cells.append("-")
                    elif e in ours:
                        cells.append("(best)" if best[t][1] == e else f"{best[t][0] / at[e][t][0]:.2f}")
                    else:
                        cells.append(f"{best[t][0] / at[e][t][0]:.2f}")
                print(f"| {e} | " + " | ".join(cells) + " |")
            print(
                "\nVitrine's fastest engine: "
                + "; ".join(
                    f"at recall {t}: " + (best[t][1] if best[t] is not None else "none reached it at these ef values")
                    for t in TARGETS
                )
            )
            if any(v is not None and v[1] for a in at.values() for v in a.values()):
                print(
                    "\n'>=': the engine was past the target at the smallest ef measured; "
                    "a ratio against it is a bound."
                )

        print(f"\n### {dataset}: build and memory (raw vector = {first['dim'] * 4} bytes)")
        print(
            "| engine | build threads | build s "
            "| RSS growth during build, bytes/vector | reported size, bytes/vector |"
        )
        print("|---|---|---|---|---|")
        for e in engines:
            r = next(r for r in rs if r["engine"] == e)
            build = f"{r['build_s']:.2f}"
            if r.get("flatten_s") is not None:
                build += f" + {r['flatten_s']:.2f} to flatten"
            rss = fmt_int(r["rss_bytes"] / r["n"]) if r.get("rss_bytes") is not None else "-"
            own = fmt_int(r["index_bytes"] / r["n"]) if r.get("index_bytes") is not None else "-"
            print(f"| {e} | {r['build_threads']} | {build} | {rss} | {own} |")
        if peers:
            print(
                "\nRSS growth counts what the build left resident (vectors, graph, allocator slack); "
                "'reported' is the engine's own count (usearch memory_usage, Vitrine's flat copy memory_bytes)."
            )


if __name__ == "__main__":
    main()
