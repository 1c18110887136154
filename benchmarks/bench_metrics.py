"""Time egath.metrics.mean_average_precision against a plain per-query implementation.

Default sizes are MS-COCO's: 5,000 queries x 117,218 database items, 64 bits, 80 labels
(random codes and random multi-hot labels, about 3 labels per item, fixed seed).

    python benchmarks/bench_metrics.py                       # full size
    python benchmarks/bench_metrics.py --queries 500 --database 20000
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from egath import metrics  # noqa: E402


def reference_map(q, db, ql, dl):
    """Per query: float Hamming distances, stable argsort, cumulative precision."""
    bits = q.shape[1]
    qf, dbf = q.astype(np.float64), db.astype(np.float64)
    qlf, dlf = ql.astype(np.float64), dl.astype(np.float64)
    aps = []
    for i in range(len(q)):
        rel = (qlf[i] @ dlf.T > 0).astype(np.float64)
        n_rel = rel.sum()
        if n_rel == 0:
            continue
        ham = 0.5 * (bits - qf[i] @ dbf.T)
        rel = rel[np.argsort(ham, kind="stable")]
        prec = np.cumsum(rel) / np.arange(1, len(rel) + 1)
        aps.append((prec * rel).sum() / n_rel)
    return float(np.mean(aps)) if aps else 0.0


def make_data(n_q, n_db, bits, n_labels, seed):
    rng = np.random.default_rng(seed)
    q = np.where(rng.random((n_q, bits)) < 0.5, -1, 1).astype(np.int8)
    db = np.where(rng.random((n_db, bits)) < 0.5, -1, 1).astype(np.int8)
    p = min(1.0, 3.0 / n_labels)
    ql = (rng.random((n_q, n_labels)) < p).astype(np.uint8)
    dl = (rng.random((n_db, n_labels)) < p).astype(np.uint8)
    return q, db, ql, dl


def popcount_rate(words: int) -> float:
    """XOR + popcount throughput of numpy on this machine, words per second."""
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2**63, size=words, dtype=np.uint64)
    b = rng.integers(0, 2**63, size=words, dtype=np.uint64)
    x = np.empty_like(a)
    out = np.empty(words, np.uint8)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        np.bitwise_xor(a, b, out=x)
        np.bitwise_count(x, out=out)
        best = min(best, time.perf_counter() - t0)
    return words / best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=5000)
    ap.add_argument("--database", type=int, default=117_218)
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--labels", type=int, default=80)
    ap.add_argument("--reference-queries", type=int, default=500,
                    help="queries timed with the reference (its time is scaled linearly)")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads of the fast path (default: available cores)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    q, db, ql, dl = make_data(args.queries, args.database, args.bits, args.labels, args.seed)
    n_q, n_db, bits = args.queries, args.database, args.bits
    threads = args.threads or metrics._default_threads()
    print(f"data: {n_q} queries x {n_db} database items, {bits} bits, {args.labels} labels; "
          f"relevant fraction {np.mean((ql[:200].astype(np.int32) @ dl.T.astype(np.int32)) > 0):.3f} "
          f"(first 200 queries)")

    t0 = time.perf_counter()
    fast = metrics.mean_average_precision(q, db, ql, dl, threads=threads)
    t_fast = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    t0 = time.perf_counter()
    fast1 = metrics.mean_average_precision(q, db, ql, dl, threads=1)
    t_fast1 = time.perf_counter() - t0
    assert fast1 == fast, "the thread count must not change the result"
    tracemalloc.start()
    metrics.mean_average_precision(q, db, ql, dl, threads=threads)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"fast path: mAP {fast:.6f}  {t_fast:.2f} s with {threads} thread(s), "
          f"{t_fast1:.2f} s with 1 thread")
    print(f"fast path memory: peak {peak / 2**20:.0f} MiB allocated by the call (tracemalloc); "
          f"process max RSS {rss / 1024:.0f} MiB (inputs and interpreter included)")

    n_ref = min(args.reference_queries, n_q)
    t0 = time.perf_counter()
    ref = reference_map(q[:n_ref], db, ql[:n_ref], dl)
    t_ref_part = time.perf_counter() - t0
    t_ref = t_ref_part * n_q / n_ref
    check = metrics.mean_average_precision(q[:n_ref], db, ql[:n_ref], dl, threads=threads)
    note = f"timed on {n_ref} queries, scaled x{n_q / n_ref:g}" if n_ref < n_q else "all queries"
    print(f"reference: {t_ref_part:.2f} s for {n_ref} queries -> {t_ref:.1f} s ({note}); "
          f"mAP on those queries {ref:.12f} vs fast {check:.12f} (|diff| {abs(ref - check):.1e})")
    print(f"speed-up: {t_ref / t_fast:.1f}x ({threads} thread(s)), "
          f"{t_ref / t_fast1:.1f}x (1 thread)")

    words = -(-bits // 64)
    pops = n_q * n_db * words
    read = n_db * words * 8 + n_q * words * 8 + (n_q + n_db) * -(-args.labels // 8)
    rate = popcount_rate(min(pops, 1 << 24))
    floor = pops / rate
    print(f"floor: {pops:.3g} XOR+popcounts ({n_q} x {n_db} x {words} words) and "
          f"{read / 2**20:.1f} MiB of packed codes and labels to read; numpy does "
          f"{rate / 1e9:.2f} G XOR+popcount/s on one core -> {floor:.2f} s; "
          f"fast path (1 thread) is {t_fast1 / floor:.1f}x that floor")


if __name__ == "__main__":
    main()
