"""The label graph the GAT classifier runs on: co-occurrence on the training labels, thresholded.

Paper: C_ij counts training samples carrying labels i and j, N_i = C_ii, D_ij = C_ij / N_i,
A_ij = 1 if D_ij >= zeta. Node features are label-name embeddings (one row per label).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from egath.io import atomic_output, check_finite, open_h5, string_array
from egath.lineage import pairs_lineage


@dataclass
class LabelGraph:
    cooccurrence: np.ndarray  # (C, C) int64, diagonal = N_i
    conditional: np.ndarray  # (C, C) float64, D_ij = C_ij / N_i
    adjacency: np.ndarray  # (C, C) uint8, self-loops included
    node_features: np.ndarray  # (C, E) float32
    label_names: list[str]


def cooccurrence_graph(labels: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(co-occurrence C, conditional D, adjacency A) for a multi-hot label matrix (n, C)."""
    labels = labels.astype(np.int64)
    counts = labels.T @ labels  # (C, C)
    n_i = np.diag(counts).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        conditional = np.where(n_i[:, None] > 0, counts / n_i[:, None], 0.0)
    adjacency = (conditional >= threshold).astype(np.uint8)
    np.fill_diagonal(adjacency, 1)  # a label that never occurs in training still attends to itself
    return counts, conditional, adjacency


def clip_label_embeddings(features_path) -> tuple[np.ndarray, str]:
    """The CLIP text embeddings of the label names stored in a features file."""
    with open_h5(features_path, ("label_text",)) as features:
        source = (f"CLIP text encoder {features.attrs.get('model', '?')} "
                  f"({features.attrs.get('pretrained', '?')}) on the label names, {features_path}")
        embeddings = features["label_text"][:].astype(np.float32)
    check_finite(embeddings, f"{features_path}: label_text")
    return embeddings, source


def label_words(name: str) -> list[str]:
    """GloVe words of a label name: lower case, split at '_', '-' and spaces."""
    return [w for w in re.split(r"[_\-\s]+", name.lower()) if w]


def glove_label_embeddings(glove_path, label_names: list[str]) -> tuple[np.ndarray, str]:
    """Mean GloVe vector of each label name's words (GCDH's 300-d node features).

    Reads the GloVe text format (a word and its vector per line), keeping only the words needed.
    """
    wanted = {w for name in label_names for w in label_words(name)}
    vectors: dict[str, np.ndarray] = {}
    with open(glove_path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            word, _, values = line.rstrip("\n").partition(" ")
            if word in wanted and word not in vectors:
                try:
                    vectors[word] = np.array(values.split(" "), dtype=np.float32)
                except ValueError as e:
                    raise ValueError(f"{glove_path}:{line_no}: not a GloVe vector line: {e}") from e
    dims = {v.shape[0] for v in vectors.values()}
    if len(dims) > 1:
        raise ValueError(f"{glove_path}: vectors of different sizes {sorted(dims)}")
    rows = []
    for name in label_names:
        found = [vectors[w] for w in label_words(name) if w in vectors]
        if not found:
            raise ValueError(f"{glove_path}: no vector for any word of label {name!r} "
                             f"({label_words(name)})")
        rows.append(np.mean(found, axis=0))
    return np.stack(rows).astype(np.float32), f"mean GloVe vectors of the label-name words ({Path(glove_path).name})"


def build_graph(pairs_path, out_path, threshold: float, node_features: np.ndarray,
                node_features_source: str) -> LabelGraph:
    """Write `graph.h5` from the training labels of `pairs.h5` and label-name embeddings.

    It records the dataset, split and label set of `pairs.h5` (egath.lineage), so that a
    graph is never used with pairs it was not built from."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"cooccurrence threshold must be in (0, 1], got {threshold}")
    lineage = pairs_lineage(pairs_path)  # first: it checks the splits
    with open_h5(pairs_path, ("labels", "label_names", "split/train")) as pairs:
        train = pairs["split/train"][:]
        labels = pairs["labels"][:][train]
        label_names = string_array(pairs["label_names"][:])
    if node_features.shape[0] != len(label_names):
        raise ValueError(f"{node_features.shape[0]} label embeddings ({node_features_source}) for "
                         f"{len(label_names)} labels in {pairs_path}")
    check_finite(node_features, f"label embeddings ({node_features_source})")
    counts, conditional, adjacency = cooccurrence_graph(labels, threshold)
    with atomic_output(out_path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(threshold=threshold, node_features_source=node_features_source,
                       **{key: lineage[key] for key in ("dataset", "split_sha256", "labels_sha256")})
        f.create_dataset("cooccurrence", data=counts)
        f.create_dataset("conditional", data=conditional)
        f.create_dataset("adjacency", data=adjacency)
        f.create_dataset("node_features", data=node_features)
        f.create_dataset("label_names", data=label_names, dtype=h5py.string_dtype())
    return LabelGraph(counts, conditional, adjacency, node_features, label_names)


def load_graph(path: str | Path) -> LabelGraph:
    with open_h5(path, ("cooccurrence", "conditional", "adjacency", "node_features", "label_names")) as f:
        graph = LabelGraph(f["cooccurrence"][:], f["conditional"][:], f["adjacency"][:],
                           f["node_features"][:], string_array(f["label_names"][:]))
    check_finite(graph.node_features, f"{path}: node_features")
    c = len(graph.label_names)
    if graph.adjacency.shape != (c, c) or graph.node_features.shape[0] != c:
        raise ValueError(f"{path}: adjacency {graph.adjacency.shape} and node_features "
                         f"{graph.node_features.shape} do not fit its {c} label names")
    if not np.isin(graph.adjacency, (0, 1)).all() or not np.all(np.diag(graph.adjacency) == 1):
        raise ValueError(f"{path}: adjacency must hold 0 or 1, with ones on the diagonal (every "
                         "label attends to itself); delete the file and run again to rebuild it")
    return graph


def read_label_names(pairs_path) -> list[str]:
    with open_h5(pairs_path, ("label_names",)) as f:
        return string_array(f["label_names"][:])
