"""Top-k Hamming search against a stable sort; packing; the compiled kernels' cache."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from egath import hamming as H

REPO = Path(__file__).resolve().parents[1]


def ref_topk(q, db, k):
    dist = ((np.asarray(q)[:, None, :] > 0) != (np.asarray(db)[None, :, :] > 0)).sum(axis=2)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(dist, order, axis=1)


def tie_heavy_codes(seed, n_q, n_db, bits, zero_one=False):
    """Codes drawn from a few distinct ones, so that most distances tie."""
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 2, (3, bits))
    q = pool[rng.integers(0, 3, n_q)]
    db = pool[rng.integers(0, 3, n_db)]
    db[rng.random(n_db) < 0.1] ^= 1
    return (q, db) if zero_one else (2 * q - 1, 2 * db - 1)


@pytest.mark.parametrize("bits", [1, 8, 16, 64, 65, 128, 300])
def test_topk_equals_the_first_k_of_a_stable_sort(bits):
    q, db = tie_heavy_codes(bits, 7, 333, bits, zero_one=bits % 2 == 0)
    for k in (1, 5, 64, 332, 333):
        idx, dist = H.hamming_topk(q, db, k)
        want_idx, want_dist = ref_topk(q, db, k)
        np.testing.assert_array_equal(idx, want_idx)
        np.testing.assert_array_equal(dist, want_dist)
        assert idx.dtype == np.int64 and dist.dtype == np.int32


def test_topk_whole_database_packed_input_and_threads():
    q, db = tie_heavy_codes(3, 40, 500, 24)
    packed = H.pack_codes(db)
    assert len(packed) == 500 and packed.bits == 24
    one_thread = H.hamming_topk(q, packed, 10**6, threads=1)  # k beyond the database: all
    assert one_thread[0].shape == (40, 500)
    np.testing.assert_array_equal(one_thread[0], ref_topk(q, db, 500)[0])
    for threads in (2, 3, 64):
        for got, want in zip(H.hamming_topk(H.pack_codes(q), packed, 10**6, threads=threads),
                             one_thread):
            np.testing.assert_array_equal(got, want)


def test_topk_rejects_bad_input():
    q, db = tie_heavy_codes(0, 2, 10, 8)
    with pytest.raises(ValueError, match="k must be >= 1"):
        H.hamming_topk(q, db, 0)
    with pytest.raises(ValueError, match="8 bits, database codes 9"):
        H.hamming_topk(q, np.ones((10, 9)), 3)
    with pytest.raises(ValueError, match="query_codes: expected a 2-D array"):
        H.hamming_topk(q[0], db, 3)
    idx, dist = H.hamming_topk(np.ones((0, 8)), db, 3)  # no queries: empty results
    assert idx.shape == dist.shape == (0, 3)


def test_pack_codes_sets_a_bit_where_positive():
    codes = np.array([[1, -1, 0.5, 0] + [-1] * 60 + [1, 1]])  # 66 bits: two words
    words = H.pack_codes(codes).words
    assert words.shape == (2, 1)
    assert words[0, 0] == 0b101 and words[1, 0] == 0b11


# --------------------------------------------------------------------------- compiled cache

# Calls both kernels on tiny inputs and prints what numba did for one of them.
PROBE = """
import json, numpy as np
from egath import hamming as H, metrics as M
rng = np.random.default_rng(0)
q, db = rng.integers(0, 2, (3, 16)), rng.integers(0, 2, (40, 16))
labels = rng.integers(0, 2, (43, 3))
H.hamming_topk(q, db, 5)
M.index_tie_map(q, db, labels[:3], labels[3:])
stats = H._rank_statistics.stats
print(json.dumps({"cache": type(H._rank_statistics._cache).__name__,
                  "hits": sum(stats.cache_hits.values()), "misses": sum(stats.cache_misses.values())}))
"""


def probe(env: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), **env}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_compiled_kernels_are_cached_and_loaded_by_the_next_process(tmp_path):
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "cache")}  # instead of egath/__pycache__
    first = probe(env)
    assert first["cache"] == "FunctionCache" and first["misses"] == 1 and first["hits"] == 0
    assert list((tmp_path / "cache").rglob("*.nbi"))  # written
    second = probe(env)
    assert second["hits"] == 1 and second["misses"] == 0  # loaded, not compiled


def test_no_writable_cache_folder_compiles_in_each_process(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    # the only place numba may cache in is below a file: it cannot be created
    got = probe({"NUMBA_CACHE_DIR": str(blocker / "cache"),
                 "NUMBA_CACHE_LOCATOR_CLASSES": "UserProvidedCacheLocator"})
    assert got["cache"] == "NullCache"
