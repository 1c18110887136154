"""Retrieval metrics against plain per-query references, hand-computed cases and tie orders."""
import itertools
import json

import h5py
import numpy as np
import pytest

from egath import metrics as M


# --------------------------------------------------------------------------- references

def _ranked(q, db, ql, dl, i):
    qb, dbb = np.asarray(q) > 0, np.asarray(db) > 0
    dist = (qb[i][None, :] != dbb).sum(axis=1)
    rel = (np.asarray(ql)[i].astype(np.int64) @ np.asarray(dl).T.astype(np.int64)) > 0
    order = np.argsort(dist, kind="stable")
    return dist, rel, order


def _mean_over_queries(q, db, ql, dl, ap):
    """Mean of ap(dist, rel, order) over the queries with a relevant item (0 where none has one)."""
    aps = []
    for i in range(len(q)):
        dist, rel, order = _ranked(q, db, ql, dl, i)
        if rel.sum():
            aps.append(ap(dist, rel, order))
    return float(np.mean(aps)) if aps else 0.0


def ref_map(q, db, ql, dl, top_k=None):
    k = len(db) if top_k is None else min(top_k, len(db))

    def ap(dist, rel, order):
        g = rel[order][:k].astype(float)
        if g.sum() == 0:
            return 0.0
        prec = np.cumsum(g) / np.arange(1, k + 1)
        return float((prec * g).sum() / g.sum())

    return _mean_over_queries(q, db, ql, dl, ap)


def ref_pr(q, db, ql, dl):
    bits = np.asarray(q).shape[1]
    P, R = [], []
    for r in range(bits + 1):
        ps, rs = [], []
        for i in range(len(q)):
            dist, rel, _ = _ranked(q, db, ql, dl, i)
            got = dist <= r
            if got.sum() > 0:
                ps.append((rel & got).sum() / got.sum())
            if rel.sum() > 0:
                rs.append((rel & got).sum() / rel.sum())
        P.append(np.mean(ps) if ps else 0.0)
        R.append(np.mean(rs) if rs else 0.0)
    return np.array(P), np.array(R)


def ref_pan(q, db, ql, dl, ns):
    """Precision@n expected over random tie orders: the first n hold every item closer than the
    bucket n cuts and, of that bucket, each item with the same probability."""
    ns = [n for n in ns if n <= len(db)]
    out = np.zeros(len(ns))
    for i in range(len(q)):
        dist, rel, _ = _ranked(q, db, ql, dl, i)
        for k, n in enumerate(ns):
            closer = dist < np.sort(dist)[n - 1]
            cut = dist == np.sort(dist)[n - 1]
            left = n - closer.sum()
            out[k] += (rel[closer].sum() + rel[cut].sum() * left / cut.sum()) / n
    return np.array(ns), out / len(q)


def ref_pan_permutations(q, db, ql, dl, ns):
    """Precision@n averaged over literally all orders of tied items (tiny inputs only)."""
    out = np.zeros(len(ns))
    for i in range(len(q)):
        dist, rel, _ = _ranked(q, db, ql, dl, i)
        groups = [np.flatnonzero(dist == d) for d in np.unique(dist)]
        orders = [[j for perm in combo for j in perm]
                  for combo in itertools.product(*[list(itertools.permutations(g)) for g in groups])]
        out += [np.mean([rel[order][:n].sum() / n for order in orders]) for n in ns]
    return out / len(q)


def _ap_of_sequence(g):
    g = np.asarray(g, float)
    if g.sum() == 0:
        return None
    return float((np.cumsum(g) / np.arange(1, len(g) + 1) * g).sum() / g.sum())


def ref_tie_aware_enumerated(q, db, ql, dl):
    """Average AP over the distinct relevance patterns of each tied group.

    Each distinct 0/1 pattern of a group of n items with r relevant arises from the same
    number r! (n - r)! of permutations, so the plain average over patterns is exact.
    """
    def ap(dist, rel, _):
        groups = [set(itertools.permutations(rel[dist == d])) for d in np.unique(dist)]
        return np.mean([_ap_of_sequence([x for p in combo for x in p]) for combo in itertools.product(*groups)])

    return _mean_over_queries(q, db, ql, dl, ap)


def ref_tie_aware_permutations(q, db, ql, dl):
    """Average AP over literally all permutations of tied items (tiny inputs only)."""
    def ap(dist, rel, _):
        groups = [np.flatnonzero(dist == d) for d in np.unique(dist)]
        values = []
        for combo in itertools.product(*[list(itertools.permutations(g)) for g in groups]):
            order = [j for perm in combo for j in perm]
            values.append(_ap_of_sequence(rel[order]))
        return np.mean(values)

    return _mean_over_queries(q, db, ql, dl, ap)


def ref_tie_aware_direct(q, db, ql, dl):
    """Closed form evaluated with explicit sums over positions (no harmonic shortcuts)."""
    def ap(dist, rel, _):
        before = rel_before = 0
        total = 0.0
        for d in np.unique(dist):
            n, r = int((dist == d).sum()), int((rel & (dist == d)).sum())
            if r:
                for k in range(1, n + 1):
                    extra = (k - 1) * (r - 1) / (n - 1) if n > 1 else 0.0
                    total += r / n * (rel_before + 1 + extra) / (before + k)
            before += n
            rel_before += r
        return total / rel.sum()

    return _mean_over_queries(q, db, ql, dl, ap)


def random_case(seed, n_q, n_db, bits, n_labels, zero_one=False, p_label=0.25):
    rng = np.random.default_rng(seed)
    # a few distinct codes only, so that distances tie heavily
    pool = rng.integers(0, 2, size=(max(3, bits // 2), bits))
    q = pool[rng.integers(0, len(pool), n_q)]
    db = pool[rng.integers(0, len(pool), n_db)]
    flip = rng.random(db.shape) < 0.1
    db = np.where(flip, 1 - db, db)
    ql = (rng.random((n_q, n_labels)) < p_label).astype(np.uint8)
    dl = (rng.random((n_db, n_labels)) < p_label).astype(np.uint8)
    if not zero_one:
        q, db = 2 * q - 1, 2 * db - 1
    return q.astype(np.int8), db.astype(np.int8), ql, dl


CASES = [(seed, bits, labels, zo)
         for seed, (bits, labels, zo) in enumerate(
             [(8, 3, False), (8, 10, True), (16, 5, False), (16, 3, True),
              (64, 10, False), (100, 4, True), (256, 6, False), (8, 3, True)])]


# --------------------------------------------------------------------------- brute force

@pytest.mark.parametrize("seed,bits,labels,zero_one", CASES)
def test_all_metrics_match_brute_force(seed, bits, labels, zero_one):
    q, db, ql, dl = random_case(seed, 23, 157, bits, labels, zero_one)
    for k in (None, 1, 10, 156, 157, 1000):
        assert M.index_tie_map(q, db, ql, dl, top_k=k) == pytest.approx(
            ref_map(q, db, ql, dl, top_k=k), abs=1e-9)
    assert M.mean_average_precision(q, db, ql, dl) == pytest.approx(
        ref_tie_aware_direct(q, db, ql, dl), abs=1e-9)
    pr = M.precision_recall_by_radius(q, db, ql, dl)
    P, R = ref_pr(q, db, ql, dl)
    np.testing.assert_array_equal(pr["radius"], np.arange(bits + 1))
    np.testing.assert_allclose(pr["precision"], P, atol=1e-9, rtol=0)
    np.testing.assert_allclose(pr["recall"], R, atol=1e-9, rtol=0)
    # (1, 5, 20) ranks only the nearest items; the other set ranks the whole database
    for ns in ((1, 5, 20), (1, 5, 50, 100, 157, 158, 500)):
        pan = M.precision_at_n(q, db, ql, dl, ns=ns)
        n_ref, p_ref = ref_pan(q, db, ql, dl, ns)
        np.testing.assert_array_equal(pan["n"], n_ref)
        np.testing.assert_allclose(pan["precision"], p_ref, atol=1e-9, rtol=0)


def test_threads_do_not_change_results():
    q, db, ql, dl = random_case(11, 37, 301, 16, 5)
    expected = ref_map(q, db, ql, dl)
    one = M.index_tie_map(q, db, ql, dl, threads=1)
    assert one == pytest.approx(expected, abs=1e-12)
    for threads in (2, 3, 50):  # more threads than queries too
        assert M.index_tie_map(q, db, ql, dl, threads=threads) == one
        assert M.mean_average_precision(q, db, ql, dl, threads=threads) == M.mean_average_precision(
            q, db, ql, dl, threads=1)


@pytest.mark.parametrize("bits", [8, 16, 32, 64, 65, 127, 128])
def test_tie_heavy_cases_match_brute_force(bits):
    # a handful of distinct codes and of label sets over 1,000 items: long runs of equal
    # distance, so the index tie rule decides most ranks; 1,000 is not a multiple of 64
    rng = np.random.default_rng(bits)
    pool = rng.integers(0, 2, (4, bits))
    q = pool[rng.integers(0, 4, 9)]
    db = pool[rng.integers(0, 4, 1000)]
    db[rng.random(1000) < 0.05] ^= 1  # a few items away from the pool
    label_sets = (rng.random((5, 6)) < 0.3).astype(np.uint8)
    ql = label_sets[rng.integers(0, 5, 9)]
    dl = label_sets[rng.integers(0, 5, 1000)]
    for k in (None, 1, 7, 100, 999, 1000):
        assert M.index_tie_map(q, db, ql, dl, top_k=k) == pytest.approx(
            ref_map(q, db, ql, dl, top_k=k), abs=1e-9)
    assert M.mean_average_precision(q, db, ql, dl) == pytest.approx(
        ref_tie_aware_direct(q, db, ql, dl), abs=1e-9)
    pan = M.precision_at_n(q, db, ql, dl, ns=(1, 10, 64, 65, 999, 1000))
    np.testing.assert_allclose(pan["precision"], ref_pan(q, db, ql, dl, pan["n"])[1],
                               atol=1e-9, rtol=0)
    if bits <= 32:  # the radius reference loops over every radius
        pr = M.precision_recall_by_radius(q, db, ql, dl)
        P, R = ref_pr(q, db, ql, dl)
        np.testing.assert_allclose(pr["precision"], P, atol=1e-9, rtol=0)
        np.testing.assert_allclose(pr["recall"], R, atol=1e-9, rtol=0)


def test_tie_aware_large_offsets_accurate():
    # buckets preceded by thousands of items: the harmonic differences must not cancel
    q, db, ql, dl = random_case(5, 4, 6000, 16, 4, p_label=0.3)
    ql[:, 0] = 1  # every query has relevant items
    assert M.mean_average_precision(q, db, ql, dl) == pytest.approx(
        ref_tie_aware_direct(q, db, ql, dl), abs=1e-12)


def test_harmonic_diff_series_and_table_agree():
    lo = np.array([0, 1, 63, 64, 65, 100, 10_000, 117_000])
    for n in (1, 2, 7, 1000):
        exact = [sum(1.0 / t for t in range(a + 1, a + n + 1)) for a in lo]
        np.testing.assert_allclose(M._harmonic_diff(lo, np.full(lo.shape, n)), exact,
                                   rtol=1e-13, atol=0)


# --------------------------------------------------------------------------- hand cases

def _codes(rows):
    return np.array(rows, np.int8)


def test_hand_computed_map():
    # one query 00, database distances [0, 1, 1, 2], relevance [1, 0, 1, 1]
    # ranked (ties by index): items 0,1,2,3 -> relevance 1,0,1,1
    # AP = (1/1 + 2/3 + 3/4) / 3 = (12 + 8 + 9) / 36 = 29/36
    q = _codes([[-1, -1]])
    db = _codes([[-1, -1], [1, -1], [-1, 1], [1, 1]])
    ql = np.array([[1, 0]])
    dl = np.array([[1, 0], [0, 1], [1, 1], [1, 0]])
    assert M.index_tie_map(q, db, ql, dl) == pytest.approx(29 / 36, abs=1e-15)
    # top 2: relevance 1,0 -> one relevant, precision 1 at rank 1 -> AP 1
    assert M.index_tie_map(q, db, ql, dl, top_k=2) == pytest.approx(1.0)
    # top 3: (1/1 + 2/3) / 2 = 5/6
    assert M.index_tie_map(q, db, ql, dl, top_k=3) == pytest.approx(5 / 6)
    # tie-aware: bucket d=1 holds {nonrel, rel}: orders (0,1) and (1,0) equally likely
    # order 1,0,1,1 -> 29/36; order 1,1,0,1 -> (1 + 1 + 3/4)/3 = 11/12 = 33/36
    assert M.mean_average_precision(q, db, ql, dl) == pytest.approx((29 + 33) / 72, abs=1e-15)
    # precision@n: first 1 -> 1; first 2 -> item 0 and one of the tied items 1, 2 (relevant
    # with probability 1/2) -> 3/4; first 3 -> 2/3; n=5 > database dropped
    pan = M.precision_at_n(q, db, ql, dl, ns=(1, 2, 3, 5))
    assert pan["n"].tolist() == [1, 2, 3]
    np.testing.assert_allclose(pan["precision"], [1.0, 3 / 4, 2 / 3])
    # radius 0: 1 retrieved, relevant -> P 1, R 1/3; radius 1: 3 retrieved, 2 relevant
    pr = M.precision_recall_by_radius(q, db, ql, dl)
    np.testing.assert_allclose(pr["precision"], [1, 2 / 3, 3 / 4])
    np.testing.assert_allclose(pr["recall"], [1 / 3, 2 / 3, 1])


def test_ties_broken_by_database_index():
    # all items at distance 0: ranking is database order, relevance 0,1 -> AP = 1/2
    q = _codes([[1, 1]])
    db = _codes([[1, 1], [1, 1]])
    ql = np.array([[1]])
    dl = np.array([[0], [1]])
    assert M.index_tie_map(q, db, ql, dl) == pytest.approx(0.5)
    # expected over both orders: (1/2 + 1) / 2
    assert M.mean_average_precision(q, db, ql, dl) == pytest.approx(0.75)


def test_queries_without_relevant_items_are_left_out():
    q = _codes([[1, 1], [-1, -1]])
    db = _codes([[1, 1], [-1, 1]])
    ql = np.array([[1, 0], [0, 0]])  # second query has no label at all
    dl = np.array([[0, 1], [1, 0]])
    # query 0: relevance 0,1 (distances 0,1) -> AP 1/2; query 1 left out
    assert M.index_tie_map(q, db, ql, dl) == pytest.approx(0.5)
    assert M.index_tie_map(q, db, ql, dl, top_k=1) == pytest.approx(0.0)
    assert M.mean_average_precision(q, db, ql, dl) == pytest.approx(0.5)
    # no query has a relevant item -> 0.0
    none = np.zeros_like(ql)
    assert M.index_tie_map(q, db, none, dl) == 0.0
    assert M.mean_average_precision(q, db, none, dl) == 0.0
    pr = M.precision_recall_by_radius(q, db, none, dl)
    assert np.all(pr["recall"] == 0) and np.all(pr["precision"] == 0)
    # precision@n averages over every query: query 0 has 0 at n=1 and 1/2 at n=2
    pan = M.precision_at_n(q, db, ql, dl, ns=(1, 2))
    np.testing.assert_allclose(pan["precision"], [0.0, 0.25])


def test_top_k_edges():
    q, db, ql, dl = random_case(3, 9, 40, 8, 3)
    full = M.index_tie_map(q, db, ql, dl)
    assert M.index_tie_map(q, db, ql, dl, top_k=40) == pytest.approx(full, abs=1e-15)
    assert M.index_tie_map(q, db, ql, dl, top_k=10**6) == pytest.approx(full, abs=1e-15)
    # k = 1: AP is 1 when the first ranked item is relevant, else 0
    assert M.index_tie_map(q, db, ql, dl, top_k=1) == pytest.approx(
        ref_map(q, db, ql, dl, top_k=1), abs=1e-15)
    with pytest.raises(ValueError):
        M.index_tie_map(q, db, ql, dl, top_k=0)


def test_radius_precision_only_counts_queries_that_retrieve():
    # query 0 retrieves item 0 at radius 0; query 1 (distance 2 to all) retrieves nothing
    q = _codes([[1, 1], [-1, -1]])
    db = _codes([[1, 1], [1, 1]])
    ql = np.array([[1], [1]])
    dl = np.array([[1], [0]])
    pr = M.precision_recall_by_radius(q, db, ql, dl)
    np.testing.assert_allclose(pr["precision"], [0.5, 0.5, 0.5])  # radius 0: query 0 only
    np.testing.assert_allclose(pr["recall"], [0.5, 0.5, 1.0])


@pytest.mark.parametrize("seed", range(4))
def test_tie_aware_equals_average_over_all_tie_orders(seed):
    rng = np.random.default_rng(100 + seed)
    bits, n_db = 3, 7
    q = rng.integers(0, 2, size=(2, bits))
    db = rng.integers(0, 2, size=(n_db, bits))
    ql = rng.integers(0, 2, size=(2, 3))
    dl = rng.integers(0, 2, size=(n_db, 3))
    got = M.mean_average_precision(q, db, ql, dl)
    assert got == pytest.approx(ref_tie_aware_permutations(q, db, ql, dl), abs=1e-12)
    assert got == pytest.approx(ref_tie_aware_enumerated(q, db, ql, dl), abs=1e-12)
    ns = tuple(range(1, n_db + 1))
    np.testing.assert_allclose(M.precision_at_n(q, db, ql, dl, ns=ns)["precision"],
                               ref_pan_permutations(q, db, ql, dl, ns), atol=1e-12, rtol=0)


def test_input_validation():
    q = np.ones((2, 8), np.int8)
    with pytest.raises(ValueError):
        M.index_tie_map(q, np.ones((3, 16)), np.ones((2, 2)), np.ones((3, 2)))
    with pytest.raises(ValueError):
        M.index_tie_map(q, np.ones((3, 8)), np.ones((2, 2)), np.ones((3, 3)))
    with pytest.raises(ValueError):
        M.index_tie_map(q[0], np.ones((3, 8)), np.ones((2, 2)), np.ones((3, 2)))


def test_default_ns():
    assert M.DEFAULT_NS[:5] == (50, 100, 200, 500, 1000)
    assert M.DEFAULT_NS[-1] == 5000 and np.all(np.diff(M.DEFAULT_NS[4:]) == 500)


# --------------------------------------------------------------------------- files

def _write_codes(path, seed=0, bits=16):
    rng = np.random.default_rng(seed)
    nq, nd, C = 12, 80, 5
    sign = lambda shape: np.where(rng.random(shape) < 0.5, -1, 1).astype(np.int8)
    with h5py.File(path, "w") as f:
        f["query/image"], f["query/text"] = sign((nq, bits)), sign((nq, bits))
        f["database/image"], f["database/text"] = sign((nd, bits)), sign((nd, bits))
        f["query/labels"] = (rng.random((nq, C)) < 0.3).astype(np.uint8)
        f["database/labels"] = (rng.random((nd, C)) < 0.3).astype(np.uint8)
        f.attrs["dataset"], f.attrs["method"], f.attrs["bits"] = "synthetic", "egath", bits
        f.attrs["model"], f.attrs["kind"] = "egath", "supervised"


def test_evaluate_codes_and_write_metrics(tmp_path):
    path = tmp_path / "codes.h5"
    _write_codes(path)
    tasks = M.evaluate_codes(path)
    assert set(tasks) == {"i2t", "t2i"}
    with h5py.File(path) as f:
        d = {k: f[k][()] for k in ("query/image", "database/text", "query/text",
                                   "database/image", "query/labels", "database/labels")}
    ql, dl = d["query/labels"], d["database/labels"]
    for task, q, db in (("i2t", d["query/image"], d["database/text"]),
                        ("t2i", d["query/text"], d["database/image"])):
        t = tasks[task]
        assert set(t) == {"map", "map_index_ties", "map_random_codes", "pr", "precision_at_n"}
        chance = np.mean([ref_tie_aware_direct(rng.integers(0, 2, q.shape), rng.integers(0, 2, db.shape), ql, dl)
                          for rng in map(np.random.default_rng, range(20))])
        assert abs(t["map_random_codes"] - chance) < 0.1  # one draw against the mean of 20
        assert t["map"] == pytest.approx(ref_tie_aware_direct(q, db, ql, dl), abs=1e-12)
        assert t["map_index_ties"] == pytest.approx(ref_map(q, db, ql, dl), abs=1e-12)
        assert t["pr"]["radius"] == list(range(17))
        assert t["precision_at_n"]["n"] == [50]  # larger n exceed the 80-item database
    out = tmp_path / "sub" / "metrics.json"
    protocol = {"n_query": 12, "n_database": 80, "relevance": "shares at least one label",
                "tie_rule": "database index", "split_seed": np.int64(0)}
    M.write_metrics(path, out, protocol)
    loaded = json.loads(out.read_text())
    assert (loaded["dataset"], loaded["method"], loaded["model"], loaded["kind"], loaded["bits"]) == (
        "synthetic", "egath", "egath", "supervised", 16)
    assert loaded["protocol"]["split_seed"] == 0
    assert loaded["tasks"] == json.loads(json.dumps(tasks))
    assert [p.name for p in out.parent.iterdir()] == ["metrics.json"]  # no temp file left


@pytest.mark.parametrize("bits", [8, 16, 32, 64, 128])
def test_headline_metrics_do_not_depend_on_database_order(tmp_path, bits):
    # tie-heavy codes: a few distinct codes, and a database sorted by label ("folder order"),
    # where the index tie rule rewards ties; permuting the rows (labels with them) must leave
    # every headline number as it is, and move the index-tie column
    rng = np.random.default_rng(bits)
    pool = rng.integers(0, 2, (5, bits))
    n_q, n_db = 40, 600
    label_sets = np.eye(6, dtype=np.uint8)[rng.integers(0, 6, n_db)]
    order = np.argsort(label_sets.argmax(1), kind="stable")
    codes = {"query/image": pool[rng.integers(0, 5, n_q)], "query/text": pool[rng.integers(0, 5, n_q)],
             "database/image": pool[(label_sets.argmax(1) + (rng.random(n_db) < 0.5)) % 5],
             "database/text": pool[rng.integers(0, 5, n_db)]}
    ql = np.eye(6, dtype=np.uint8)[rng.integers(0, 6, n_q)]

    def evaluate(name, rows):
        path = tmp_path / name
        with h5py.File(path, "w") as f:
            for key, value in codes.items():
                f[key] = 2 * (value[rows] if key.startswith("database") else value).astype(np.int8) - 1
            f["query/labels"], f["database/labels"] = ql, label_sets[rows]
            f.attrs["dataset"], f.attrs["method"], f.attrs["bits"] = "d", "m", bits
        return M.evaluate_codes(path)

    folder = evaluate("folder.h5", order)
    shuffled = evaluate("shuffled.h5", rng.permutation(n_db))
    for task in ("i2t", "t2i"):
        a, b = folder[task], shuffled[task]
        assert a["map"] == pytest.approx(b["map"], abs=1e-9)
        np.testing.assert_allclose(a["precision_at_n"]["precision"], b["precision_at_n"]["precision"],
                                   atol=1e-9, rtol=0)
        for key in ("precision", "recall"):
            np.testing.assert_allclose(a["pr"][key], b["pr"][key], atol=1e-9, rtol=0)
    assert any(abs(folder[t]["map_index_ties"] - shuffled[t]["map_index_ties"]) > 1e-3 for t in ("i2t", "t2i"))


def test_write_metrics_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "metrics.json"
    with pytest.raises((FileNotFoundError, OSError)):
        M.write_metrics(tmp_path / "missing.h5", out, {})
    assert list(tmp_path.iterdir()) == []
