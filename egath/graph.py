"""The label graph the GAT classifier runs on: co-occurrence on the training labels, thresholded.

Paper: C_ij counts training samples carrying labels i and j, N_i = C_ii, D_ij = C_ij / N_i,
A_ij = 1 if D_ij >= zeta. Node features are label-name embeddings (one row per label).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from egath.io import atomic_output, open_h5, string_array


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


def build_graph(pairs_path: str | Path, features_path: str | Path, out_path: str | Path,
                threshold: float) -> LabelGraph:
    """Write `graph.h5` from the training labels of `pairs.h5` and the label-name embeddings
    (`label_text`) of a features file."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"cooccurrence threshold must be in (0, 1], got {threshold}")
    with open_h5(pairs_path, ("labels", "label_names", "split/train")) as pairs:
        train = pairs["split/train"][:]
        labels = pairs["labels"][:][train]
        label_names = string_array(pairs["label_names"][:])
    with open_h5(features_path, ("label_text",)) as features:
        node_features = features["label_text"][:].astype(np.float32)
        source = f"CLIP text encoder {features.attrs.get('model', '?')} " \
                 f"({features.attrs.get('pretrained', '?')}) on the label names"
    if node_features.shape[0] != len(label_names):
        raise ValueError(f"{features_path}: {node_features.shape[0]} label embeddings for "
                         f"{len(label_names)} labels in {pairs_path}")
    counts, conditional, adjacency = cooccurrence_graph(labels, threshold)
    with atomic_output(out_path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(threshold=threshold, node_features_source=source)
        f.create_dataset("cooccurrence", data=counts)
        f.create_dataset("conditional", data=conditional)
        f.create_dataset("adjacency", data=adjacency)
        f.create_dataset("node_features", data=node_features)
        f.create_dataset("label_names", data=label_names, dtype=h5py.string_dtype())
    return LabelGraph(counts, conditional, adjacency, node_features, label_names)


def load_graph(path: str | Path) -> LabelGraph:
    with open_h5(path, ("cooccurrence", "conditional", "adjacency", "node_features", "label_names")) as f:
        return LabelGraph(f["cooccurrence"][:], f["conditional"][:], f["adjacency"][:],
                          f["node_features"][:], string_array(f["label_names"][:]))
