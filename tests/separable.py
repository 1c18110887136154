"""A small separable retrieval problem for method tests, and the mAP helpers they compare with.

The `separable_files` fixture (tests/conftest.py) writes it once per session:
N pairs, C labels, D-dimensional CLIP-like features, a 12-word bag-of-words; train with BITS.
"""
from __future__ import annotations

import h5py
import numpy as np

from egath.graph import build_graph, clip_label_embeddings
from egath.metrics import mean_average_precision
from h5files import write_features, write_pairs

N, C, D = 120, 4, 16
N_QUERY, N_TRAIN = 24, 64
BITS = 8


def write_separable_files(root):
    """Labels drive both modalities (CLIP-like features and bag-of-words): a separable problem.
    Returns the paths of pairs.h5, features.h5 and graph.h5."""
    rng = np.random.default_rng(0)
    labels = np.zeros((N, C), np.uint8)
    labels[np.arange(N), rng.integers(C, size=N)] = 1
    extra = rng.random(N) < 0.3  # about a third of the samples carry a second label
    labels[extra, rng.integers(C, size=int(extra.sum()))] = 1
    image = labels @ rng.standard_normal((C, D)) + 0.3 * rng.standard_normal((N, D))
    text = labels @ rng.standard_normal((C, D)) + 0.3 * rng.standard_normal((N, D))
    bow = ((labels @ rng.random((C, 12)) + 0.3 * rng.random((N, 12))) > 0.6).astype(np.uint8)
    order = rng.permutation(N)
    query, train = order[:N_QUERY], order[N_QUERY:N_QUERY + N_TRAIN]
    pairs, features = root / "pairs.h5", root / "features.h5"
    write_pairs(pairs, labels, query, train, bow=bow, dataset="separable")
    write_features(features, image, text, rng.standard_normal((C, D)))
    graph = root / "graph.h5"
    build_graph(pairs, graph, 0.3, *clip_label_embeddings(features))
    return {"pairs": pairs, "features": features, "graph": graph}


def retrieval_map(codes_path):
    """Mean of I->T and T->I mAP, query against database, from codes.h5."""
    with h5py.File(codes_path, "r") as f:
        q, d = ({k: f[f"{split}/{k}"][:] for k in ("image", "text", "labels")} for split in ("query", "database"))
    return 0.5 * (mean_average_precision(q["image"], d["text"], q["labels"], d["labels"])
                  + mean_average_precision(q["text"], d["image"], q["labels"], d["labels"]))


def random_codes_map(files):
    with h5py.File(files["pairs"], "r") as f:
        labels = f["labels"][:]
        query, database = f["split/query"][:], f["split/database"][:]
    rng = np.random.default_rng(0)
    scores = [mean_average_precision(rng.choice([-1, 1], (len(query), BITS)),
                                     rng.choice([-1, 1], (len(database), BITS)), labels[query], labels[database])
              for _ in range(5)]
    return float(np.mean(scores))
