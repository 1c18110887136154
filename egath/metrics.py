"""Hamming-ranking retrieval metrics: mAP, precision-recall by radius, precision@N.

Conventions shared by every function:

* Codes are arrays of shape (n, bits) in {-1, +1} or {0, 1}; a bit is set where the code is
  > 0. Any number of bits is accepted.
* Labels are multi-hot arrays (n, classes); a database item is relevant to a query when they
  share at least one label.
* Ranking is by Hamming distance. Items at equal distance (ties, common with short codes) have
  no order of their own, so every headline metric is order-free: mAP and precision@N are their
  expectation over uniformly random orders of the tied items (McSherry & Najork, ECIR 2008),
  and a precision-recall point by Hamming radius takes whole distance buckets. Permuting the
  database rows never changes them. `index_tie_map` is the secondary number: ties broken by
  database index, as the peers' published code does with a stable sort (their unstable
  `torch.sort` gives yet another order); it depends on the order of the database's rows.

How it is computed (egath.hamming): a Hamming distance takes only bits + 1 values, so no
sort is needed. One compiled pass over the database per query, in index order, keeps a counter
per distance; it gives the per-distance counts of items and of relevant items, from which
every order-free metric follows in closed form, and every item's rank under the index tie
rule for `index_tie_map`. Queries run in parallel threads; memory beyond the inputs is a few
bytes per database item per thread.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from egath.hamming import distance_histograms, label_bitmaps, pack_codes, rank_statistics

__all__ = [
    "DEFAULT_NS",
    "mean_average_precision",
    "index_tie_map",
    "precision_recall_by_radius",
    "precision_at_n",
    "random_codes_map",
    "evaluate_codes",
    "write_metrics",
]

DEFAULT_NS = (50, 100, 200, 500) + tuple(range(1000, 5001, 500))

_EULER_GAMMA = 0.57721566490153286061


# --------------------------------------------------------------------------- inputs

class _Problem:
    """Validated, packed inputs of one retrieval task."""

    def __init__(self, query_codes, database_codes, query_labels, database_labels):
        self.query = pack_codes(query_codes, "query_codes")
        self.database = pack_codes(database_codes, "database_codes")
        if self.query.bits != self.database.bits:
            raise ValueError(f"query codes have {self.query.bits} bits, "
                             f"database codes {self.database.bits}")
        ql = np.asarray(query_labels)
        dl = np.asarray(database_labels)
        if ql.ndim != 2 or dl.ndim != 2 or ql.shape[1] != dl.shape[1]:
            raise ValueError(f"labels must be 2-D with equal columns, got {ql.shape} and {dl.shape}")
        if ql.shape[0] != len(self.query) or dl.shape[0] != len(self.database):
            raise ValueError("codes and labels disagree on the number of rows")
        if len(self.query) == 0 or len(self.database) == 0:
            raise ValueError("need at least one query and one database item")
        self.n_query, self.n_db, self.bits = len(self.query), len(self.database), self.query.bits
        self.query_labels = ql > 0
        self.database_label_bits = label_bitmaps(dl, "database_labels")


def _scan(problem: _Problem, *, index_ties: bool = False, top_k: int | None = None,
          threads: int | None = None) -> dict:
    """Per-query statistics of the ranking, plus "n_relevant": the per-distance counts
    (egath.hamming.distance_histograms), and with `index_ties` the index-tie AP sums too
    (egath.hamming.rank_statistics)."""
    if not index_ties:
        stats = distance_histograms(problem.query, problem.database, problem.query_labels,
                                    problem.database_label_bits, threads=threads)
    else:
        cut = problem.n_db if top_k is None else min(int(top_k), problem.n_db)
        stats = rank_statistics(problem.query, problem.database, problem.query_labels,
                                problem.database_label_bits, cut=cut, threads=threads)
    stats["n_relevant"] = stats["hist_rel"].sum(axis=1)
    return stats


# --------------------------------------------------------------------------- AP

def mean_average_precision(query_codes, database_codes, query_labels, database_labels, *,
                           threads: int | None = None) -> float:
    """Mean average precision of Hamming ranking over the whole database, order-free.

    Each query's AP is its expectation over all orders of the items tied at equal Hamming
    distance (each order equally likely), computed in closed form from per-distance counts:
    the tie-aware AP of McSherry & Najork (ECIR 2008). It does not depend on the order of the
    database's rows. Queries with no relevant item are left out of the mean; 0.0 if all are.

    `threads` sets how many threads share the queries (default: the available
    cores, at most OMP_NUM_THREADS when set, at most 8); the result does not depend on it.
    """
    problem = _Problem(query_codes, database_codes, query_labels, database_labels)
    return _mean_tie_aware(_scan(problem, threads=threads))


def index_tie_map(query_codes, database_codes, query_labels, database_labels,
                  top_k: int | None = None, *, threads: int | None = None) -> float:
    """Mean average precision of Hamming ranking with ties broken by database index.

    The number the peers' published evaluation code gives with a stable sort: for comparison
    with published numbers only, since it depends on the order of the database's rows (a
    manifest written folder by folder puts items of one label side by side and rewards codes
    with many ties). AP = mean over the relevant items of the ranked list of the precision at
    their rank. With `top_k`, only the first k ranked positions count and AP is normalised by
    the number of relevant items among them; a query with relevant items in the database but
    none in the top k contributes AP 0. k larger than the database means the whole database.
    Queries with no relevant item in the whole database are left out of the mean; 0.0 if
    every query is.
    """
    problem = _Problem(query_codes, database_codes, query_labels, database_labels)
    if top_k is not None and int(top_k) < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    return _mean_index_tie_ap(_scan(problem, index_ties=True, top_k=top_k, threads=threads))


def _mean_index_tie_ap(stats: dict) -> float:
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
    stats = _scan(problem, threads=threads)
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
    """Precision among the first n ranked items, for each n in `ns`, order-free.

    Where n cuts through a distance bucket, the first n hold every item closer than that
    distance and a uniformly random subset of the bucket, so the relevant items the bucket
    adds are expected in proportion: r_d (n - L_d) / n_d for a bucket of n_d items, r_d of
    them relevant, L_d items closer. Values of n larger than the database are dropped.
    Precision is averaged over all queries (a query with no relevant item scores 0).
    Returns dict(n=int array, precision=float array).
    """
    problem = _Problem(query_codes, database_codes, query_labels, database_labels)
    ns = _valid_ns(ns, problem.n_db)
    return _precision_at_n(_scan(problem, threads=threads), ns)


def _valid_ns(ns, n_db: int) -> tuple[int, ...]:
    ns = tuple(sorted({int(n) for n in ns}))
    if ns and ns[0] < 1:
        raise ValueError(f"n must be >= 1, got {ns[0]}")
    return tuple(n for n in ns if n <= n_db)


def _precision_at_n(stats: dict, ns: tuple[int, ...]) -> dict:
    n_arr = np.asarray(ns, np.int64)
    if not ns or stats["n_relevant"].size == 0:
        return {"n": n_arr, "precision": np.zeros(len(ns))}
    n = stats["hist_all"].astype(np.float64)[:, None, :]  # (Q, 1, D)
    r = stats["hist_rel"].astype(np.float64)[:, None, :]
    before = np.cumsum(n, axis=2) - n
    taken = np.clip(n_arr[None, :, None] - before, 0.0, n)  # (Q, len(ns), D): items of each bucket in the first n
    hits = (r * np.divide(taken, n, out=np.zeros_like(taken), where=n > 0)).sum(axis=2)
    return {"n": n_arr, "precision": (hits / n_arr).mean(axis=0)}


# --------------------------------------------------------------------------- files

def random_codes_map(query_labels, database_labels, bits: int, seed: int = 0, *,
                     threads: int | None = None) -> float:
    """mAP (order-free) of uniformly random codes on the same labels and sizes: the chance
    level that a trained model's mAP is read against."""
    rng = np.random.default_rng(seed)
    query = rng.integers(0, 2, (len(query_labels), bits))
    database = rng.integers(0, 2, (len(database_labels), bits))
    return mean_average_precision(query, database, query_labels, database_labels, threads=threads)


def _evaluate(problem: _Problem, ns, threads) -> dict:
    stats = _scan(problem, index_ties=True, threads=threads)
    pr = _pr_curve(stats, problem.bits)
    pan = _precision_at_n(stats, _valid_ns(ns, problem.n_db))
    return {
        "map": _mean_tie_aware(stats),
        "map_index_ties": _mean_index_tie_ap(stats),
        "pr": {key: [v.item() for v in pr[key]] for key in ("radius", "precision", "recall")},
        "precision_at_n": {key: [v.item() for v in pan[key]] for key in ("n", "precision")},
    }


def evaluate_codes(codes_h5_path, ns=DEFAULT_NS, *, threads: int | None = None) -> dict:
    """Evaluate a codes.h5 file; returns the "tasks" part of metrics.json.

    {"i2t": {...}, "t2i": {...}}: i2t ranks the text database for image queries, t2i the
    image database for text queries. Each holds map (order-free: ties in random order),
    map_index_ties (ties by database index, for comparison with published numbers),
    map_random_codes (the chance level), pr (radius, precision, recall) and precision_at_n
    (n, precision; order-free) as plain Python numbers and lists.
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

    dataset, method, model, kind and bits come from the attributes of codes.h5; `protocol` is stored with
    what codes.h5 knows added: the set sizes and how the model's epoch was selected. The file
    appears complete or not at all. Returns the written dict.
    """
    from egath.io import atomic_output, open_h5

    with open_h5(codes_h5, required=("query/labels", "database/labels")) as f:
        attrs = {key: f.attrs[key] for key in ("dataset", "method", "model", "kind", "bits")}
        protocol = {**protocol, "n_query": len(f["query/labels"]), "n_database": len(f["database/labels"])}
        if "epoch_selection" in f.attrs:
            protocol["epoch_selection"] = f.attrs["epoch_selection"]
    attrs = {k: (v.decode() if isinstance(v, bytes) else _plain(v)) for k, v in attrs.items()}
    metrics = {
        "dataset": str(attrs["dataset"]),
        "method": str(attrs["method"]),
        "model": str(attrs["model"]),
        "kind": str(attrs["kind"]),
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
