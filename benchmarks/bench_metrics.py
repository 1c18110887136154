"""Time egath.metrics.mean_average_precision against a per-query sort and the popcount floor.

Side by side in one process, on one thread unless said otherwise:
  reference  the per-query sort of the peer codebases (float Hamming distances, stable
             argsort, cumulative precision), timed on --reference-queries and scaled;
  fast       egath.metrics.mean_average_precision (the headline: mAP over the whole ranking,
             order-free), with 1 thread and with --threads; its pass also yields the index-tie
             mAP (egath.metrics.index_tie_map), which is checked against the reference;
  floor      numpy's bare XOR + popcount of the same packed codes, one query row at a time
             into buffers that stay in cache (the fastest numpy form found).
It prints fast against both (the speed-up over the reference, the multiple of the floor),
checks fast against the reference on the reference's queries, reports the peak memory of
the fast call, and times egath.hamming.hamming_topk for search.

Default sizes are MS-COCO's database with 1,000 queries: 117,218 database items, 64 bits,
80 labels (random codes and random multi-hot labels, about 3 labels per item, fixed seed).
BLAS runs on one thread, so the reference is single-threaded too. Times are the best of
--repeats runs, as wall time and as CPU time of the calling thread (which leaves out time
spent waiting for a core on a shared machine).

    python benchmarks/bench_metrics.py
    python benchmarks/bench_metrics.py --labels-per-item 7      # about half the items relevant
    python benchmarks/bench_metrics.py --database 1000000 --queries 200 --reference-queries 0
"""
from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy is imported
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from egath import hamming, metrics  # noqa: E402


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


def make_data(n_q, n_db, bits, n_labels, seed, labels_per_item=3.0):
    rng = np.random.default_rng(seed)
    q = np.where(rng.random((n_q, bits)) < 0.5, -1, 1).astype(np.int8)
    db = np.where(rng.random((n_db, bits)) < 0.5, -1, 1).astype(np.int8)
    p = min(1.0, labels_per_item / n_labels)
    ql = (rng.random((n_q, n_labels)) < p).astype(np.uint8)
    dl = (rng.random((n_db, n_labels)) < p).astype(np.uint8)
    return q, db, ql, dl


def numpy_floor(query: hamming.PackedCodes, database: hamming.PackedCodes) -> None:
    """XOR + popcount of every (query, item) pair, nothing else."""
    n_words, n_db = database.words.shape
    xor = np.empty(n_db, np.uint64)
    dist = np.empty(n_db, np.uint8)
    extra = np.empty(n_db, np.uint8)
    for i in range(len(query)):
        np.bitwise_xor(query.words[0, i], database.words[0], out=xor)
        np.bitwise_count(xor, out=dist)
        for w in range(1, n_words):
            np.bitwise_xor(query.words[w, i], database.words[w], out=xor)
            dist += np.bitwise_count(xor, out=extra)


def large_array_floor(n_pairs: int) -> float:
    """XOR + popcount over two 2**24-word arrays (out of cache), scaled to n_pairs words: how
    the earlier version of this benchmark measured its floor."""
    rng = np.random.default_rng(1)
    a, b = (rng.integers(0, 2**63, size=2**24, dtype=np.uint64) for _ in range(2))
    xor, out = np.empty_like(a), np.empty(a.size, np.uint8)
    wall, _, _ = best_of(3, lambda: (np.bitwise_xor(a, b, out=xor), np.bitwise_count(xor, out=out)))
    return wall * n_pairs / a.size


def best_of(repeats, fn, *args, **kwargs):
    """Shortest wall time and shortest CPU time of this thread over `repeats` calls (the least
    disturbed ones on a shared machine; the CPU time leaves out time spent waiting for a core,
    and counts only this thread, so it serves single-threaded calls)."""
    wall = cpu = float("inf")
    result = None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.thread_time()
        result = fn(*args, **kwargs)
        cpu = min(cpu, time.thread_time() - c0)
        wall = min(wall, time.perf_counter() - t0)
    return wall, cpu, result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--database", type=int, default=117_218)
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--labels", type=int, default=80)
    ap.add_argument("--labels-per-item", type=float, default=3.0,
                    help="mean labels per item (more labels: more relevant items per query)")
    ap.add_argument("--reference-queries", type=int, default=100,
                    help="queries timed with the reference, its time scaled linearly (0: skip)")
    ap.add_argument("--threads", type=int, default=2, help="threads of the multi-threaded run")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of the fast path and floor")
    ap.add_argument("--search-database", type=int, default=200_000,
                    help="database size of the top-k search timing (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    n_q, n_db, bits = args.queries, args.database, args.bits
    q, db, ql, dl = make_data(n_q, n_db, bits, args.labels, args.seed, args.labels_per_item)
    first = min(n_q, 200)
    relevant = np.mean((ql[:first].astype(np.int32) @ dl.T.astype(np.int32)) > 0)
    print(f"data: {n_q} queries x {n_db} database items, {bits} bits, {args.labels} labels; "
          f"relevant fraction {relevant:.3f} (first {first} queries)")

    t0 = time.perf_counter()
    metrics.mean_average_precision(q[:2], db[:100], ql[:2], dl[:100], threads=1)
    print(f"first call (compiles, or loads the compiled kernels): {time.perf_counter() - t0:.2f} s")

    # the fast path on one thread and the floor, alternating so that both see the same machine
    packed_q, packed_db = hamming.pack_codes(q), hamming.pack_codes(db)
    fast1 = [float("inf")] * 2  # wall, cpu
    floor = [float("inf")] * 2
    for _ in range(args.repeats):
        *times, mean_ap = best_of(1, metrics.mean_average_precision, q, db, ql, dl, threads=1)
        fast1 = np.minimum(fast1, times)
        floor = np.minimum(floor, best_of(1, numpy_floor, packed_q, packed_db)[:2])
    t_fast, _, mean_ap_n = best_of(args.repeats, metrics.mean_average_precision, q, db, ql, dl,
                                   threads=args.threads)
    assert mean_ap_n == mean_ap, "the thread count must not change the result"
    print(f"fast path: mAP {mean_ap:.6f}; 1 thread {fast1[0]:.3f} s wall ({fast1[1]:.3f} s CPU), "
          f"{args.threads} threads {t_fast:.3f} s wall (best of {args.repeats})")
    print(f"floor: numpy XOR + popcount of the same packed codes {floor[0]:.3f} s wall "
          f"({floor[1]:.3f} s CPU) ({n_q} x {n_db} x {packed_db.words.shape[0]} words)")
    print(f"RATIO to the popcount floor, 1 thread: {fast1[0] / floor[0]:.2f}x wall, "
          f"{fast1[1] / floor[1]:.2f}x CPU (goal <= 2x); {args.threads} threads: "
          f"{t_fast / floor[0]:.2f}x wall")
    loose = large_array_floor(n_q * n_db * packed_db.words.shape[0])
    print(f"(numpy XOR + popcount on 2**24-word arrays, out of cache, as this benchmark measured "
          f"its floor before: {loose:.3f} s wall for as many words; 1 thread is "
          f"{fast1[0] / loose:.2f}x that)")

    tracemalloc.start()
    metrics.mean_average_precision(q, db, ql, dl, threads=1)
    peak1 = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    metrics.mean_average_precision(q, db, ql, dl, threads=args.threads)
    peak_n = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    inputs = q.nbytes + db.nbytes + ql.nbytes + dl.nbytes
    print(f"fast path memory: peak {peak1 / 2**20:.1f} MiB allocated by the call with 1 thread, "
          f"{peak_n / 2**20:.1f} MiB with {args.threads} (tracemalloc; the inputs themselves, "
          f"{inputs / 2**20:.1f} MiB, not counted)")

    n_ref = min(args.reference_queries, n_q)
    if n_ref > 0:
        t_ref, c_ref, ref = best_of(1, reference_map, q[:n_ref], db, ql[:n_ref], dl)
        scale = n_q / n_ref
        check = metrics.index_tie_map(q[:n_ref], db, ql[:n_ref], dl, threads=1)
        note = f"timed on {n_ref} queries, scaled x{scale:g}" if n_ref < n_q else "all queries"
        print(f"reference: {t_ref * scale:.1f} s wall ({c_ref * scale:.1f} s CPU) ({note}); "
              f"index-tie mAP on those queries {ref:.12f} vs fast {check:.12f} (|diff| {abs(ref - check):.1e})")
        print(f"SPEED-UP over the per-query sort, 1 thread: {t_ref * scale / fast1[0]:.0f}x wall, "
              f"{c_ref * scale / fast1[1]:.0f}x CPU (goal >= 50x); {args.threads} threads: "
              f"{t_ref * scale / t_fast:.0f}x wall")

    if args.search_database > 0:
        rng = np.random.default_rng(args.seed + 1)
        search_db = hamming.pack_codes(rng.integers(0, 2, (args.search_database, bits)))
        search_q = hamming.pack_codes(rng.integers(0, 2, (200, bits)))
        one = hamming.PackedCodes(np.ascontiguousarray(search_q.words[:, :1]), bits)
        hamming.hamming_topk(one, search_db, 10)  # compiles outside the timing
        for k in (10, 1000):
            t, c, _ = best_of(args.repeats, hamming.hamming_topk, search_q, search_db, k, threads=1)
            print(f"top-{k} search: {1000 * t / len(search_q):.3f} ms wall "
                  f"({1000 * c / len(search_q):.3f} ms CPU) per query "
                  f"({args.search_database} x {bits}-bit packed database, 1 thread)")


if __name__ == "__main__":
    main()
