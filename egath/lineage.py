"""Which files belong together: pairs.h5, a features file, graph.h5, model.pt and a search
index each carry facts of what they were made from, and a file that does not belong with the
others is refused with both files named and what differs (dataset, split, label set, source
rows, vocabulary, encoder).

The facts of pairs.h5 are computed from its datasets when it is read, so a pairs.h5 of any
version can be checked; the other files record theirs when they are written (features:
`source_sha256`, `dataset`; graph.h5: `dataset`, `split_sha256`, `labels_sha256`; model.pt:
`inputs`, from `inputs_record`; a search index: the model's). A fact a file does not record
(written before it was recorded) is not compared.
"""
from __future__ import annotations

import hashlib

import numpy as np

from egath.io import open_h5, string_array, strings_digest

SPLITS = ("query", "database", "train")


class MismatchError(ValueError):
    """Two files that must come from the same data do not."""


def split_digest(splits: dict) -> str:
    """sha256 of the query, database and train row numbers."""
    h = hashlib.sha256()
    for name in SPLITS:
        rows = np.ascontiguousarray(splits[name], dtype=np.int64)
        h.update(f"{name}[{rows.size}]".encode() + rows.tobytes())
    return h.hexdigest()


def check_splits(pairs_path, n: int, splits: dict) -> None:
    """Each split holds sorted rows of 0..n-1 without repeats, the query and database sets are
    disjoint, and the training set is part of the database (egath.datasets.manifest.split_indices)."""
    for name, rows in splits.items():
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise ValueError(f"{pairs_path}: split/{name} holds rows outside 0..{n - 1}")
        if np.any(np.diff(rows) <= 0):
            raise ValueError(f"{pairs_path}: split/{name} is not sorted, or repeats rows")
    if np.intersect1d(splits["query"], splits["database"]).size:
        raise ValueError(f"{pairs_path}: split/query and split/database share rows")
    if not np.isin(splits["train"], splits["database"]).all():
        raise ValueError(f"{pairs_path}: split/train holds rows that are not in split/database")


def pairs_lineage(pairs_path) -> dict:
    """dataset, vocabulary, split, label-set and source-row digests and the row count of a
    pairs.h5, whose splits are checked (check_splits). A digest the file cannot give is ""."""
    with open_h5(pairs_path, ("image_paths", "texts", "label_names",
                              *(f"split/{s}" for s in SPLITS))) as f:
        paths, texts = string_array(f["image_paths"][()]), string_array(f["texts"][()])
        labels = string_array(f["label_names"][()])
        splits = {name: f[f"split/{name}"][()] for name in SPLITS}
        vocabulary = string_array(f["vocabulary"][()]) if "vocabulary" in f else None
        dataset = _attr(f, "dataset")
    check_splits(pairs_path, len(paths), splits)
    return {"dataset": dataset, "vocabulary_sha256": strings_digest(vocabulary) if vocabulary else "",
            "rows": len(paths), "split_sha256": split_digest(splits),
            "labels_sha256": strings_digest(labels),
            # what a features file was extracted from (egath.features records the same digest)
            "source_sha256": strings_digest(paths, texts, labels)}


def encoder_of(features_path) -> str:
    """The CLIP encoder a features file names in its provenance: "model (pretrained)"."""
    with open_h5(features_path) as f:
        return f"{_attr(f, 'model')} ({_attr(f, 'pretrained') or 'none'})"


def features_lineage(features_path) -> dict:
    with open_h5(features_path, ("image",)) as f:
        return {"dataset": _attr(f, "dataset"), "source_sha256": _attr(f, "source_sha256"),
                "rows": f["image"].shape[0], "encoder": encoder_of(features_path)}


def graph_lineage(graph_path) -> dict:
    with open_h5(graph_path, ("label_names",)) as f:
        return {"dataset": _attr(f, "dataset"), "split_sha256": _attr(f, "split_sha256"),
                "labels_sha256": strings_digest(string_array(f["label_names"][()]))}


MODEL_FACTS = ("dataset", "vocabulary_sha256", "split_sha256", "labels_sha256", "source_sha256")


def inputs_record(pairs: dict, features: dict, facts=MODEL_FACTS) -> dict:
    """What a trained file records of its inputs (key `inputs` of model.pt and first_stage.pt):
    `facts` of its pairs.h5 (pairs_lineage) and the encoder of its features (features_lineage)."""
    return {**{fact: pairs[fact] for fact in facts}, "encoder": features["encoder"]}


def model_lineage(ckpt: dict) -> dict:
    """What a loaded model.pt says of itself and of what it was trained on."""
    inputs = ckpt.get("inputs", {})
    return {**inputs, "dataset": inputs.get("dataset") or ckpt["dataset"], "method": ckpt["method"],
            "bits": int(ckpt["bits"])}


def differing(a: dict, b: dict, keys) -> list[str]:
    """The keys whose values differ where both sides know one: a side without a value (a file
    from before that fact was recorded) leaves nothing to compare."""
    return [key for key in keys
            if a.get(key) not in (None, "") and b.get(key) not in (None, "") and str(a[key]) != str(b[key])]


def check(a_path, a: dict, b_path, b: dict, keys) -> None:
    """Raise MismatchError naming both files and each of `keys` on which their facts differ."""
    found = [f"{key}: {a[key]} in {a_path}, {b[key]} in {b_path}" for key in differing(a, b, keys)]
    if found:
        raise MismatchError(f"{a_path} does not belong with {b_path}: " + "; ".join(found)
                            + ". Rebuild the one that is out of date (delete it and run again)")


def check_features(pairs_path, pairs: dict, features_path) -> dict:
    """Refuse a features file extracted from other pairs; returns its facts."""
    features = features_lineage(features_path)
    check(features_path, features, pairs_path, pairs, ("dataset", "rows", "source_sha256"))
    return features


def check_graph(pairs_path, pairs: dict, graph_path) -> None:
    """Refuse a graph.h5 built from another dataset, split or label set."""
    check(graph_path, graph_lineage(graph_path), pairs_path, pairs,
          ("dataset", "split_sha256", "labels_sha256"))


def check_model(model_path, ckpt: dict, pairs_path, pairs_path_facts: dict, features_path) -> None:
    """Refuse a model.pt trained on other data than these pairs and features."""
    model = model_lineage(ckpt)
    features = check_features(pairs_path, pairs_path_facts, features_path)
    check(model_path, model, pairs_path, pairs_path_facts,
          ("dataset", "split_sha256", "labels_sha256", "vocabulary_sha256", "source_sha256"))
    check(model_path, model, features_path, features, ("encoder",))


def _attr(f, key: str) -> str:
    value = f.attrs.get(key, "")
    return value.decode() if isinstance(value, bytes) else str(value)
