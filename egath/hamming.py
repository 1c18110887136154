"""Compiled Hamming-ranking kernels: one pass over the database per query, no sort.

Ranking is by Hamming distance with ties broken by database index (the order a stable sort
gives). A distance takes only bits + 1 values, so a query's whole ranking follows from
per-distance counters kept during one pass in database order: the item that is the p-th
seen at distance d has rank (number of items at distances below d) + p. `distance_histograms`
(per-distance counts only: all the order-free metrics need) and `rank_statistics` (also the
index-tie ranks) feed the metrics (egath.metrics), `hamming_topk` the search.

Codes are bit-packed into uint64 words (`pack_codes`); database labels into one bitmap per
class (`label_bitmaps`), so that a query's relevant items are the OR of the bitmaps of its
labels. The kernels are compiled by numba on first use and cached in __pycache__ beside
this file; where that folder is read-only numba uses its per-user cache folder instead
(NUMBA_CACHE_DIR names another), and where no folder is writable every process compiles
them again (a few seconds). They release the GIL, so query ranges run in parallel threads;
each query is computed by one thread alone, so the thread count never changes a result.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

__all__ = ["PackedCodes", "pack_codes", "label_bitmaps", "default_threads", "distance_histograms",
           "rank_statistics", "hamming_topk"]

# Rows packed at a time: bounds the temporary copies made while packing (a few MB).
_PACK_ROWS = 1 << 16
# Label rows transposed at a time: small enough for the cache, a multiple of 64.
_TRANSPOSE_ROWS = 1 << 13


def _jit(fn):
    try:
        return numba.njit(nogil=True, cache=True)(fn)
    except RuntimeError:  # numba found no writable cache folder: compile in each process
        return numba.njit(nogil=True)(fn)


@intrinsic
def _popcount(typingctx, word):
    """Set bits of a uint64, as an int64 (one popcnt instruction)."""
    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])
    return types.int64(types.uint64), codegen


@intrinsic
def _lowest_bit(typingctx, word):
    """Index of the lowest set bit of a non-zero uint64 (one tzcnt instruction)."""
    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], context.get_constant(types.boolean, True))
    return types.int64(types.uint64), codegen


# --------------------------------------------------------------------------- packing

def _bits_to_words(flags: np.ndarray) -> np.ndarray:
    """(n, b), set where non-zero -> uint64 (n, max(1, ceil(b / 64))): bit t of a row in word
    t // 64; unused bits are 0 (at least one word, so that zero columns need no special case)."""
    packed = np.packbits(flags, axis=1, bitorder="little")
    out = np.zeros((flags.shape[0], 8 * max(1, -(-flags.shape[1] // 64))), np.uint8)
    out[:, :packed.shape[1]] = packed
    return out.view(np.uint64)


def _check_2d(values, name: str) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (n, columns), got shape {values.shape}")
    return values


@dataclass(frozen=True)
class PackedCodes:
    """Binary codes packed for the kernels: `words` (ceil(bits / 64), n) uint64, word-major
    so that the kernels read one word of consecutive items contiguously."""
    words: np.ndarray
    bits: int

    def __len__(self) -> int:
        return self.words.shape[1]


def pack_codes(codes, name: str = "codes") -> PackedCodes:
    """Pack codes of shape (n, bits) in {-1, +1} or {0, 1} (a bit is set where > 0).

    Packing a database once and passing the result to `hamming_topk` saves repacking it on
    every call. PackedCodes pass through unchanged.
    """
    if isinstance(codes, PackedCodes):
        return codes
    codes = _check_2d(codes, name)
    n, bits = codes.shape
    words = np.empty((max(1, -(-bits // 64)), n), np.uint64)
    for start in range(0, n, _PACK_ROWS):
        stop = min(start + _PACK_ROWS, n)
        words[:, start:stop] = _bits_to_words(codes[start:stop] > 0).T
    return PackedCodes(words, bits)


def label_bitmaps(labels, name: str = "labels") -> np.ndarray:
    """Multi-hot labels (n, classes) -> uint64 (classes, ceil(n / 64)): bit j of row c says
    whether item j carries label c."""
    labels = _check_2d(labels, name)
    n, classes = labels.shape
    out = np.zeros((classes, 8 * -(-n // 64)), np.uint8)
    # transposed a block of rows at a time, which stays in cache (a multiple of 64 rows)
    for start in range(0, n, _TRANSPOSE_ROWS):
        block = labels[start:start + _TRANSPOSE_ROWS]
        flags = block if block.dtype.kind in "bu" else block > 0  # packbits: set where != 0
        packed = np.packbits(np.ascontiguousarray(flags.T), axis=1, bitorder="little")
        out[:, start // 8:start // 8 + packed.shape[1]] = packed
    return out.view(np.uint64)


# --------------------------------------------------------------------------- threads

def default_threads() -> int:
    """Available cores, capped by OMP_NUM_THREADS (Snakemake sets it to a job's threads) and 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        n = min(n, int(omp))
    return max(1, min(n, 8))


def _over_query_ranges(n_query: int, threads: int | None, work) -> None:
    """Call work(start, stop) on contiguous query ranges, one per thread."""
    threads = default_threads() if threads is None else max(1, int(threads))
    threads = min(threads, n_query)
    if threads <= 1:
        work(0, n_query)
        return
    edges = np.linspace(0, n_query, threads + 1).astype(np.int64).tolist()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(work, edges[:-1], edges[1:]))  # list() re-raises a worker's exception


def _distance_buffer(bits: int, n: int) -> np.ndarray:
    return np.empty(n, np.uint8 if bits <= 255 else np.uint16)


# --------------------------------------------------------------------------- kernels

@_jit
def _distances(q_words, i, db_words, dist):
    """dist[j] = Hamming distance of query i to database item j (a loop that vectorises)."""
    q = q_words[0, i]
    for j in range(db_words.shape[1]):
        dist[j] = _popcount(q ^ db_words[0, j])
    for w in range(1, db_words.shape[0]):
        q = q_words[w, i]
        for j in range(db_words.shape[1]):
            dist[j] += _popcount(q ^ db_words[w, j])


# Counters are kept for four stretches of the database side by side (interleaved in one loop):
# consecutive items at the same distance, common with trained codes, would otherwise each wait
# for the previous one's counter update.
_STREAMS = 4


@_jit
def _relevant_bitmap(q_labels, i, label_bits, relevant):
    """relevant = bitmap of the database items sharing a label with query i."""
    relevant[:] = 0
    for c in range(q_labels.shape[1]):
        if q_labels[i, c]:
            for w in range(relevant.size):
                relevant[w] |= label_bits[c, w]


@_jit
def _count_distances(dist, counts, total):
    """total[d] = how many entries of dist equal d (four interleaved counters in `counts`)."""
    counts[:] = 0
    n = dist.size
    last = n - n % _STREAMS
    for j in range(0, last, _STREAMS):
        counts[0, dist[j]] += 1
        counts[1, dist[j + 1]] += 1
        counts[2, dist[j + 2]] += 1
        counts[3, dist[j + 3]] += 1
    for j in range(last, n):
        counts[0, dist[j]] += 1
    for d in range(total.size):
        total[d] = counts[0, d] + counts[1, d] + counts[2, d] + counts[3, d]


@_jit
def _histograms(q_words, q_labels, db_words, label_bits, start, stop, dist, hist_all, hist_rel):
    counts = np.empty((_STREAMS, hist_all.shape[1]), np.int64)
    relevant = np.empty(label_bits.shape[1], np.uint64)
    one = np.uint64(1)
    for i in range(start, stop):
        _relevant_bitmap(q_labels, i, label_bits, relevant)
        _distances(q_words, i, db_words, dist)
        _count_distances(dist, counts, hist_all[i])
        rel = hist_rel[i]
        for w in range(relevant.size):
            bits = relevant[w]
            while bits:
                rel[dist[(w << 6) + _lowest_bit(bits)]] += 1
                bits &= bits - one


@_jit
def _rank_statistics(q_words, q_labels, db_words, label_bits, start, stop, cut, dist, pos,
                     hist_all, hist_rel, ap_sum, ap_count):
    n_db = db_words.shape[1]
    n_dist = hist_all.shape[1]
    # stretch s covers items [s * stretch, (s + 1) * stretch), the last one also the rest; a
    # multiple of 64, so that each 64-item word of the relevance bitmap lies in one stretch
    stretch = n_db // (64 * _STREAMS) * 64
    counts = np.empty((_STREAMS, n_dist), np.int64)
    offsets = np.empty((_STREAMS, n_dist), np.int64)
    relevant = np.empty(label_bits.shape[1], np.uint64)
    inverse_rank_sum = np.empty(n_dist)
    one = np.uint64(1)
    # views of each stretch, indexed from 0 so that no index needs a negative-index check
    c0, c1, c2, c3 = counts[0], counts[1], counts[2], counts[3]
    d0, d1, d2, d3 = (dist[:stretch], dist[stretch:2 * stretch], dist[2 * stretch:3 * stretch],
                      dist[3 * stretch:n_db])
    p0, p1, p2, p3 = (pos[:stretch], pos[stretch:2 * stretch], pos[2 * stretch:3 * stretch],
                      pos[3 * stretch:n_db])
    for i in range(start, stop):
        _relevant_bitmap(q_labels, i, label_bits, relevant)
        _distances(q_words, i, db_words, dist)
        # One pass in database order: pos[j] = how many items of j's stretch up to j lie at
        # j's distance.
        counts[:] = 0
        for j in range(stretch):
            d = d0[j]
            p = c0[d] + 1
            c0[d] = p
            p0[j] = p
            d = d1[j]
            p = c1[d] + 1
            c1[d] = p
            p1[j] = p
            d = d2[j]
            p = c2[d] + 1
            c2[d] = p
            p2[j] = p
            d = d3[j]
            p = c3[d] + 1
            c3[d] = p
            p3[j] = p
        for j in range(stretch, d3.size):
            d = d3[j]
            p = c3[d] + 1
            c3[d] = p
            p3[j] = p
        # offsets[s, d]: items ranked before stretch s's first item at distance d
        count = hist_all[i]
        before = 0
        for d in range(n_dist):
            count[d] = 0
            for s in range(_STREAMS):
                offsets[s, d] = before + count[d]
                count[d] += counts[s, d]
            before += count[d]
        # The relevant items, in database order. One at distance d that is the a-th relevant
        # one there has rank offsets[s, d] + pos and precision (R_d + a) / rank, R_d being the
        # relevant items at smaller distances, known only at the end: so sum a / rank now and,
        # per distance, 1 / rank, which R_d multiplies afterwards.
        rel = hist_rel[i]
        inverse_rank_sum[:] = 0.0
        ordinal_sum = 0.0
        n_counted = 0
        for s in range(_STREAMS):
            last_word = (s + 1) * stretch // 64 if s < _STREAMS - 1 else relevant.size
            for w in range(s * stretch // 64, last_word):
                bits = relevant[w]
                while bits:
                    j = (w << 6) + _lowest_bit(bits)
                    bits &= bits - one
                    d = dist[j]
                    a = rel[d] + 1
                    rel[d] = a
                    rank = offsets[s, d] + pos[j]
                    if rank <= cut:
                        inverse = 1.0 / rank
                        inverse_rank_sum[d] += inverse
                        ordinal_sum += a * inverse
                        n_counted += 1
        total = ordinal_sum
        rel_before = 0
        for d in range(n_dist):
            total += rel_before * inverse_rank_sum[d]
            rel_before += rel[d]
        ap_sum[i] = total
        ap_count[i] = n_counted


def distance_histograms(query: PackedCodes, database: PackedCodes, query_labels: np.ndarray,
                        database_label_bits: np.ndarray, *, threads: int | None = None) -> dict:
    """Per query, the items and the relevant items at each Hamming distance: all that the
    order-free metrics need, without ranking any item.

    Arguments as for `rank_statistics`. Returns hist_all, hist_rel (n_query, bits + 1) int64.
    Memory besides inputs and outputs: 1 byte per database item per thread (2 above 255 bits).
    """
    n_query, n_db = len(query), len(database)
    q_labels = np.ascontiguousarray(np.asarray(query_labels) > 0)
    out = {"hist_all": np.zeros((n_query, query.bits + 1), np.int64),
           "hist_rel": np.zeros((n_query, query.bits + 1), np.int64)}
    _over_query_ranges(n_query, threads, lambda start, stop: _histograms(
        query.words, q_labels, database.words, database_label_bits, start, stop,
        _distance_buffer(query.bits, n_db), out["hist_all"], out["hist_rel"]))
    return out


def rank_statistics(query: PackedCodes, database: PackedCodes, query_labels: np.ndarray,
                    database_label_bits: np.ndarray, *, cut: int,
                    threads: int | None = None) -> dict:
    """Everything the metrics need from the ranking of every query, in one pass each.

    An item is relevant to a query when they share a label: `query_labels` is (n_query,
    classes) multi-hot, `database_label_bits` comes from `label_bitmaps`. `cut` is the last
    rank the index-tie AP counts (the database size for AP over the whole ranking). Returns
    per-query arrays:
      hist_all, hist_rel (n_query, bits + 1): items / relevant items at each distance, from
        which every order-free metric follows;
      ap_sum, ap_count (n_query,): under the index tie rule, the sum of the precision at each
        relevant rank <= cut, and how many such ranks there are.
    Memory besides inputs and outputs: 5 bytes per database item per thread (6 above 255 bits).
    """
    n_query, n_db = len(query), len(database)
    q_labels = np.ascontiguousarray(np.asarray(query_labels) > 0)
    out = {
        "hist_all": np.zeros((n_query, query.bits + 1), np.int64),
        "hist_rel": np.zeros((n_query, query.bits + 1), np.int64),
        "ap_sum": np.zeros(n_query),
        "ap_count": np.zeros(n_query, np.int64),
    }

    def work(start, stop):
        _rank_statistics(query.words, q_labels, database.words, database_label_bits,
                         start, stop, int(cut), _distance_buffer(query.bits, n_db),
                         np.empty(n_db, np.uint32), *out.values())

    _over_query_ranges(n_query, threads, work)
    return out


@_jit
def _topk(q_words, db_words, start, stop, k, dist, indices, distances):
    n_db = db_words.shape[1]
    n_dist = 64 * db_words.shape[0] + 1
    counts = np.empty((_STREAMS, n_dist), np.int64)
    count = np.empty(n_dist, np.int64)
    next_slot = np.empty(n_dist, np.int64)
    for i in range(start, stop):
        _distances(q_words, i, db_words, dist)
        _count_distances(dist, counts, count)
        # the first k ranks hold every item closer than `reach` and the first ones at it
        filled = 0
        reach = n_dist - 1
        for d in range(n_dist):
            next_slot[d] = filled
            filled += count[d]
            if filled >= k:
                reach = d
                break
        placed = 0
        for j in range(n_db):
            d = dist[j]
            if d <= reach:
                slot = next_slot[d]
                if slot < k:  # only the bucket at `reach` can overflow the k slots
                    indices[i, slot] = j
                    distances[i, slot] = d
                    next_slot[d] = slot + 1
                    placed += 1
                    if placed == k:
                        break


def hamming_topk(query_codes, database_codes, k: int, *,
                 threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest database items of each query by Hamming distance, ties by database index.

    Codes are (n, bits) arrays in {-1, +1} or {0, 1}, or `PackedCodes`. k larger than the
    database gives the whole database ranked. Returns (indices int64, distances int32), both
    (n_query, min(k, n_database)), each row in rank order: exactly the first k entries of a
    stable sort of the distances. Memory besides inputs and outputs: 1 byte per database
    item per thread (2 above 255 bits).
    """
    query = pack_codes(query_codes, "query_codes")
    database = pack_codes(database_codes, "database_codes")
    if query.bits != database.bits:
        raise ValueError(f"query codes have {query.bits} bits, database codes {database.bits}")
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(int(k), len(database))
    indices = np.zeros((len(query), k), np.int64)
    distances = np.zeros((len(query), k), np.int32)
    if len(query) and k:
        _over_query_ranges(len(query), threads, lambda start, stop: _topk(
            query.words, database.words, start, stop, k,
            _distance_buffer(query.bits, len(database)), indices, distances))
    return indices, distances
