"""Hamming-ranking retrieval metrics: mAP, tie-aware mAP, precision-recall by radius, precision@N.

Conventions shared by every function:

* Codes are arrays of shape (n, bits) in {-1, +1} or {0, 1}; a bit is set where the code is
  > 0. Any number of bits is accepted.
* Labels are multi-hot arrays (n, classes); a database item is relevant to a query when they
  share at least one label.
* Ranking is by Hamming distance; items at equal distance are ordered by database index
  (a stable sort), so every metric below has one defined value.

How it is computed: codes are bit-packed into uint64 words and distances come from popcounts,
a block of queries at a time, so memory stays bounded (about 60 MB per thread at MS-COCO
scale).
Relevance is built from bit-packed label columns (a query's relevance row is the OR of the
columns of its labels). A Hamming distance takes only bits + 1 values, so the tie-aware AP
and the precision-recall curve need only per-distance counts of items and of relevant items;
the index-tie AP and precision@N need the ranked order, which a radix argsort of the small
integer distances gives in linear time (when only the first few thousand ranks are needed,
only the items within the distance those ranks reach are sorted).
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

__all__ = [
    "DEFAULT_NS",
    "mean_average_precision",
    "tie_aware_map",
    "precision_recall_by_radius",
    "precision_at_n",
    "random_codes_map",
    "evaluate_codes",
    "write_metrics",
]

DEFAULT_NS = (50, 100, 200, 500) + tuple(range(1000, 5001, 500))

# Elements (queries x database items) handled per block: large enough to amortise Python
# overhead, small enough that the int64 sort order of a block stays in the tens of MB.
_BLOCK_ELEMENTS = 1 << 21
_EULER_GAMMA = 0.57721566490153286061


# --------------------------------------------------------------------------- inputs

def _code_bits(codes, name: str) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (n, bits), got shape {codes.shape}")
    return codes > 0


def _pack_codes(bits: np.ndarray) -> np.ndarray:
    """Bool (n, b) -> uint64 (n, ceil(b / 64)); padding bits are 0 on both sides of an XOR."""
    packed = np.packbits(bits, axis=1)
    pad = (-packed.shape[1]) % 8
    if pad:
        packed = np.pad(packed, ((0, 0), (0, pad)))
    return np.ascontiguousarray(packed).view(np.uint64)


class _Problem:
    """Validated, packed inputs of one retrieval task."""

    def __init__(self, query_codes, database_codes, query_labels, database_labels):
        qb = _code_bits(query_codes, "query_codes")
        db = _code_bits(database_codes, "database_codes")
        if qb.shape[1] != db.shape[1]:
            raise ValueError(f"query codes have {qb.shape[1]} bits, database codes {db.shape[1]}")
        ql = np.asarray(query_labels)
        dl = np.asarray(database_labels)
        if ql.ndim != 2 or dl.ndim != 2 or ql.shape[1] != dl.shape[1]:
            raise ValueError(f"labels must be 2-D with equal columns, got {ql.shape} and {dl.shape}")
        if ql.shape[0] != qb.shape[0] or dl.shape[0] != db.shape[0]:
            raise ValueError("codes and labels disagree on the number of rows")
        if qb.shape[0] == 0 or db.shape[0] == 0:
            raise ValueError("need at least one query and one database item")
        self.n_query, self.bits = qb.shape
        self.n_db = db.shape[0]
        self.n_dist = self.bits + 1  # distances 0..bits
        self.dist_dtype = np.uint8 if self.bits <= 255 else np.uint16
        self.query_words = _pack_codes(qb)
        # (words, n_db): each word row is contiguous for the broadcast XOR.
        self.db_words = np.ascontiguousarray(_pack_codes(db).T)
        self.query_labels = ql > 0
        # (classes, ceil(n_db / 8)): bit j of column c says whether item j carries label c.
        self.label_columns = np.packbits((dl > 0).T, axis=1, bitorder="little")

    def distances(self, start: int, stop: int) -> np.ndarray:
        """Hamming distances of queries start:stop to the whole database, (c, n_db)."""
        q = self.query_words[start:stop]
        c = stop - start
        out = np.empty((c, self.n_db), self.dist_dtype)
        xor = np.empty((c, self.n_db), np.uint64)
        for w in range(q.shape[1]):
            np.bitwise_xor(q[:, w, None], self.db_words[w][None, :], out=xor)
            if w == 0:
                np.bitwise_count(xor, out=out)
            else:
                out += np.bitwise_count(xor)
        return out

    def relevance(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Bool (c, n_db), True where the item shares a label with the query; and row sums."""
        ql = self.query_labels[start:stop]
        packed = np.zeros((stop - start, self.label_columns.shape[1]), np.uint8)
        for label in np.flatnonzero(ql.any(axis=0)):
            rows = ql[:, label]
            packed[rows] |= self.label_columns[label]
        n_relevant = np.bitwise_count(packed).sum(axis=1, dtype=np.int64)
        rel = np.unpackbits(packed, axis=1, count=self.n_db, bitorder="little")
        return rel.view(bool), n_relevant

    def blocks(self) -> list[tuple[int, int]]:
        step = max(1, min(self.n_query, _BLOCK_ELEMENTS // max(1, self.n_db)))
        return [(s, min(s + step, self.n_query)) for s in range(0, self.n_query, step)]


def _default_threads() -> int:
    """Available cores, capped by OMP_NUM_THREADS (Snakemake sets it to a job's threads) and 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        n = min(n, int(omp))
    return max(1, min(n, 8))


def _scan(problem: _Problem, *, want_ap: bool = False, top_k: int | None = None,
          want_hist: bool = False, ns: tuple[int, ...] = (), threads: int | None = None) -> dict:
    """One pass over the query blocks; returns per-query arrays.

    Keys: "n_relevant" (n_query,) always; with want_ap "ap_sum" and "ap_count" (sum of
    precision at relevant ranks within the cut-off, and the number of those ranks); with
    want_hist "hist_all" and "hist_rel" (n_query, bits + 1) counts of items / relevant items at
    each distance; with ns "hits" (n_query, len(ns)) relevant items among the first n.
    """
    n_db, n_dist = problem.n_db, problem.n_dist
    cut = n_db if top_k is None else min(int(top_k), n_db)
    need_order = want_ap or bool(ns)
    prefix = max([cut if want_ap else 0, *ns]) if need_order else 0

    # 1 / rank for ranks 1..cut, repeated for each row of a block, so that the precision
    # terms are a gather instead of a division (built once per block height).
    inverse_ranks = {}

    def inverse_rank_table(c):
        if c not in inverse_ranks:
            inverse_ranks[c] = np.tile(1.0 / np.arange(1, cut + 1), c)
        return inverse_ranks[c]

    def run_block(bounds):
        start, stop = bounds
        c = stop - start
        dist = problem.distances(start, stop)
        rel, n_rel = problem.relevance(start, stop)
        res = {"n_relevant": n_rel}
        if want_hist:
            # one histogram of 2 * distance + relevant gives both counts per distance
            key_dtype = np.uint8 if 2 * n_dist <= 256 else np.uint16
            keys = np.left_shift(dist, 1, dtype=key_dtype)
            keys |= rel
            both = np.empty((c, n_dist, 2), np.int64)
            for i in range(c):
                both[i] = np.bincount(keys[i], minlength=2 * n_dist).reshape(n_dist, 2)
            del keys
            res["hist_rel"] = both[:, :, 1]
            res["hist_all"] = both.sum(axis=2)
        if need_order:
            ranked = np.empty((c, prefix), bool)  # relevance in ranked order, first `prefix`
            if 4 * prefix <= n_db:
                # Only the first `prefix` ranks are needed: sort just the items within the
                # distance that the prefix reaches (a small fraction of the database).
                for i in range(c):
                    counts = res["hist_all"][i] if want_hist else np.bincount(
                        dist[i], minlength=n_dist)
                    reach = np.searchsorted(np.cumsum(counts), prefix)
                    near = np.flatnonzero(dist[i] <= reach)
                    sub = np.argsort(dist[i][near], kind="stable")[:prefix]
                    np.take(rel[i], near[sub], out=ranked[i])
            else:
                order = np.argsort(dist, axis=1, kind="stable")
                for i in range(c):
                    np.take(rel[i], order[i, :prefix], out=ranked[i])
                del order
            if want_ap:
                top = ranked[:, :cut]
                pos = np.flatnonzero(top)  # row-major: grouped by query, ascending rank
                if cut == n_db:
                    per_row = n_rel
                else:
                    per_row = np.diff(np.searchsorted(pos, np.arange(c + 1) * cut))
                first = np.cumsum(per_row) - per_row
                # the k-th relevant item of a row at rank p adds precision k / p
                ordinal = np.arange(1, pos.size + 1, dtype=np.float64)
                ordinal -= np.repeat(first, per_row)
                ordinal *= inverse_rank_table(c)[pos]
                sums = np.zeros(c)
                nonempty = per_row > 0
                if pos.size:
                    sums[nonempty] = np.add.reduceat(ordinal, first[nonempty])
                res["ap_sum"] = sums
                res["ap_count"] = per_row
            if ns:
                cum = np.cumsum(ranked[:, :max(ns)], axis=1, dtype=np.int64)
                res["hits"] = cum[:, [n - 1 for n in ns]]
        return res

    bounds = problem.blocks()
    threads = _default_threads() if threads is None else max(1, int(threads))
    if threads > 1 and len(bounds) > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            parts = list(pool.map(run_block, bounds))
    else:
        parts = [run_block(b) for b in bounds]
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


# --------------------------------------------------------------------------- AP

def mean_average_precision(query_codes, database_codes, query_labels, database_labels,
                           top_k: int | None = None, *, threads: int | None = None) -> float:
    """Mean average precision of Hamming ranking, ties broken by database index.

    For one query, AP = mean over the relevant items of the ranked list of the precision at
    their rank. With `top_k`, only the first k ranked positions count and AP is normalised by
    the number of relevant items among them; a query with relevant items in the database but
    none in the top k contributes AP 0. k larger than the database means the whole database.

    Queries with no relevant item in the whole database are left out of the mean; if every
    query is left out the result is 0.0.

    `threads` sets how many query blocks are processed in parallel (default: the available
    cores, at most OMP_NUM_THREADS when set, at most 8); the result does not depend on it.
    """
    problem = _Problem(query_codes, database_codes, query_labels, database_labels)
    if top_k is not None and int(top_k) < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    stats = _scan(problem, want_ap=True, top_k=top_k, threads=threads)
    return _mean_ap(stats)


def _mean_ap(stats: dict) -> float:
    keep = stats["n_relevant"] > 0
    if not keep.any():
        return 0.0
    count = stats["ap_count"][keep]
    ap = np.divide(stats["ap_sum"][keep], count, out=np.zeros(count.shape), where=count > 0)
    return float(ap.mean())


def _harmonic(m: np.ndarray) -> np.ndarray:
    """H(m) = sum_{i=1}^m 1/i for integer arrays m >= 0 (exact table below 64, series above)."""
    m = np.asarray(m, np.float64)
    small = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, 64))])
    big = np.maximum(m, 64.0)
    inv2 = 1.0 / (big * big)
    series = (np.log(big) + _EULER_GAMMA + 0.5 / big
              - inv2 * (1.0 / 12 - inv2 * (1.0 / 120 - inv2 / 252)))
    return np.where(m < 64, small[np.minimum(m, 63).astype(np.int64)], series)


def _harmonic_diff(lo: np.ndarray, n: np.ndarray) -> np.ndarray:
    """sum_{t=lo+1}^{lo+n} 1/t with full relative accuracy, also when lo >> n."""
    lo = np.asarray(lo, np.float64)
    n = np.asarray(n, np.float64)
    plain = _harmonic(lo + n) - _harmonic(lo)
    # For lo >= 64 subtract the asymptotic series term by term: log1p keeps the relative
    # accuracy that H(lo + n) - H(lo) loses to cancellation.
    a = np.maximum(lo, 64.0)
    b = a + n

    def inv_pow_diff(k):
        return a ** -k - b ** -k

    series = (np.log1p(n / a) - 0.5 * n / (a * b) + inv_pow_diff(2) / 12
              - inv_pow_diff(4) / 120 + inv_pow_diff(6) / 252)
    return np.where(lo >= 64, series, plain)


def _tie_aware_ap(hist_all: np.ndarray, hist_rel: np.ndarray) -> np.ndarray:
    """Expected AP over uniformly random orders within each distance bucket, per query.

    For a relevant item in a bucket of n items (r relevant) preceded by L items (RL relevant),
    its position is uniform on L+1..L+n and, at within-bucket position i, the expected number
    of relevant items before it in the bucket is (i - 1)(r - 1)/(n - 1). Summing over i:
      r/n * [ (RL + 1) * dH + (r - 1)/(n - 1) * (n - (L + 1) * dH) ],  dH = sum_{t=L+1}^{L+n} 1/t.
    """
    n = hist_all.astype(np.float64)
    r = hist_rel.astype(np.float64)
    before = np.cumsum(n, axis=1) - n
    rel_before = np.cumsum(r, axis=1) - r
    dh = _harmonic_diff(before, n)
    safe_n = np.maximum(n, 1.0)
    within = np.divide(r - 1.0, n - 1.0, out=np.zeros_like(n), where=n > 1)
    terms = r / safe_n * ((rel_before + 1.0) * dh + within * (n - (before + 1.0) * dh))
    terms[r == 0] = 0.0
    total = r.sum(axis=1)
    return np.divide(terms.sum(axis=1), total, out=np.zeros(len(total)), where=total > 0)


def tie_aware_map(query_codes, database_codes, query_labels, database_labels, *,
                  threads: int | None = None) -> float:
    """Tie-aware mean average precision (McSherry & Najork, ECIR 2008).

    Each query's AP is its expectation over all orders of the items tied at equal Hamming
    distance (each order equally likely), computed in closed form from per-distance counts.
    Queries with no relevant item are left out of the mean; 0.0 if all are.
    """
    problem = _Problem(query_codes, database_codes, query_labels, database_labels)
    stats = _scan(problem, want_hist=True, threads=threads)
    return _mean_tie_aware(stats)


def _mean_tie_aware(stats: dict) -> float:
    keep = stats["n_relevant"] > 0
    if not keep.any():
        return 0.0
    return float(_tie_aware_ap(stats["hist_all"][keep], stats["hist_rel"][keep]).mean())


# --------------------------------------------------------------------------- curves

def precision_recall_by_radius(query_codes, database_codes, query_labels, database_labels, *,
                               threads: int | None = None) -> dict:
    """Precision and recall of retrieving every item within Hamming radius r, r = 0..bits.

    Returns dict(radius=int array 0..bits, precision=float array, recall=float array).
    Precision at r is averaged over the queries that retrieve at least one item at that
    radius (0.0 when none does); recall is averaged over the queries that have at least one
    relevant item (0.0 when none has).
    """
    problem = _Problem(query_codes, database_codes, query_labels, database_labels)
    stats = _scan(problem, want_hist=True, threads=threads)
    return _pr_curve(stats, problem.bits)


def _pr_curve(stats: dict, bits: int) -> dict:
    retrieved = np.cumsum(stats["hist_all"], axis=1).astype(np.float64)
    hits = np.cumsum(stats["hist_rel"], axis=1).astype(np.float64)
    n_rel = stats["n_relevant"].astype(np.float64)
    got = retrieved > 0
    prec = np.divide(hits, retrieved, out=np.zeros_like(hits), where=got)
    n_got = got.sum(axis=0)
    precision = np.divide(prec.sum(axis=0), n_got, out=np.zeros(bits + 1), where=n_got > 0)
    has_rel = n_rel > 0
    if has_rel.any():
        recall = (hits[has_rel] / n_rel[has_rel, None]).mean(axis=0)
    else:
        recall = np.zeros(bits + 1)
    return {"radius": np.arange(bits + 1), "precision": precision, "recall": recall}


def precision_at_n(query_codes, database_codes, query_labels, database_labels,
                   ns=DEFAULT_NS, *, threads: int | None = None) -> dict:
    """Precision among the first n ranked items (ties by database index), for each n in `ns`.

    Values of n larger than the database are dropped. Precision is averaged over all queries
    (a query with no relevant item scores 0). Returns dict(n=int array, precision=float array).
    """
    problem = _Problem(query_codes, database_codes, query_labels, database_labels)
    ns = _valid_ns(ns, problem.n_db)
    stats = _scan(problem, ns=ns, threads=threads)
    return _precision_at_n(stats, ns)


def _valid_ns(ns, n_db: int) -> tuple[int, ...]:
    ns = tuple(sorted({int(n) for n in ns}))
    if ns and ns[0] < 1:
        raise ValueError(f"n must be >= 1, got {ns[0]}")
    return tuple(n for n in ns if n <= n_db)


def _precision_at_n(stats: dict, ns: tuple[int, ...]) -> dict:
    if not ns or stats["n_relevant"].size == 0:
        return {"n": np.asarray(ns, np.int64), "precision": np.zeros(len(ns))}
    precision = (stats["hits"] / np.asarray(ns, np.float64)).mean(axis=0)
    return {"n": np.asarray(ns, np.int64), "precision": precision}


# --------------------------------------------------------------------------- files

def random_codes_map(query_labels, database_labels, bits: int, seed: int = 0, *,
                     threads: int | None = None) -> float:
    """mAP of uniformly random codes on the same labels and sizes: the chance level that a
    trained model's mAP is read against."""
    rng = np.random.default_rng(seed)
    query = rng.integers(0, 2, (len(query_labels), bits))
    database = rng.integers(0, 2, (len(database_labels), bits))
    return mean_average_precision(query, database, query_labels, database_labels, threads=threads)


def _evaluate(problem: _Problem, ns, threads) -> dict:
    ns = _valid_ns(ns, problem.n_db)
    stats = _scan(problem, want_ap=True, want_hist=True, ns=ns, threads=threads)
    pr = _pr_curve(stats, problem.bits)
    pan = _precision_at_n(stats, ns)
    return {
        "map": _mean_ap(stats),
        "map_tie_aware": _mean_tie_aware(stats),
        "pr": {key: [v.item() for v in pr[key]] for key in ("radius", "precision", "recall")},
        "precision_at_n": {key: [v.item() for v in pan[key]] for key in ("n", "precision")},
    }


def evaluate_codes(codes_h5_path, ns=DEFAULT_NS, *, threads: int | None = None) -> dict:
    """Evaluate a codes.h5 file; returns the "tasks" part of metrics.json.

    {"i2t": {...}, "t2i": {...}}: i2t ranks the text database for image queries, t2i the
    image database for text queries. Each holds map, map_tie_aware, map_random_codes (the
    chance level), pr (radius, precision, recall) and precision_at_n (n, precision) as plain
    Python numbers and lists.
    """
    from egath.io import open_h5

    keys = ("query/image", "query/text", "database/image", "database/text",
            "query/labels", "database/labels")
    with open_h5(codes_h5_path, required=keys) as f:
        data = {key: f[key][()] for key in keys}
    tasks = {}
    for task, q, d in (("i2t", "image", "text"), ("t2i", "text", "image")):
        problem = _Problem(data[f"query/{q}"], data[f"database/{d}"],
                           data["query/labels"], data["database/labels"])
        tasks[task] = _evaluate(problem, ns, threads)
        tasks[task]["map_random_codes"] = random_codes_map(
            data["query/labels"], data["database/labels"], problem.bits, seed=len(tasks), threads=threads)
    return tasks


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def write_metrics(codes_h5, out_json, protocol: dict, *, threads: int | None = None) -> dict:
    """Evaluate `codes_h5` and write the full metrics.json (docs/formats.md) atomically.

    dataset, method and bits come from the attributes of codes.h5; `protocol` is stored with
    what codes.h5 knows added: the set sizes and how the model's epoch was selected. The file
    appears complete or not at all. Returns the written dict.
    """
    from egath.io import atomic_output, open_h5

    with open_h5(codes_h5, required=("query/labels", "database/labels")) as f:
        attrs = {key: f.attrs[key] for key in ("dataset", "method", "bits")}
        protocol = {**protocol, "n_query": len(f["query/labels"]), "n_database": len(f["database/labels"])}
        if "epoch_selection" in f.attrs:
            protocol["epoch_selection"] = f.attrs["epoch_selection"]
    attrs = {k: (v.decode() if isinstance(v, bytes) else _plain(v)) for k, v in attrs.items()}
    metrics = {
        "dataset": str(attrs["dataset"]),
        "method": str(attrs["method"]),
        "bits": int(attrs["bits"]),
        "protocol": {k: _plain(v) for k, v in dict(protocol).items()},
        "tasks": evaluate_codes(codes_h5, threads=threads),
    }
    text = json.dumps(metrics, indent=2, allow_nan=False) + "\n"
    with atomic_output(Path(out_json)) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    return metrics
