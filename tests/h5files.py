"""Small pairs.h5 and features.h5 files in the formats of docs/formats.md, for tests."""
from __future__ import annotations

import h5py
import numpy as np


def permutation_split(n: int, n_query: int, n_train: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(query, train) rows drawn like egath.datasets.manifest.split_indices."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[:n_query]), np.sort(order[n_query:n_query + n_train])


def write_pairs(path, labels, query, train, *, bow=None, texts=None, image_paths=None,
                label_names=None, vocabulary=None, dataset="test", split_seed=0) -> None:
    """Write pairs.h5; what a test leaves out gets placeholders of the right shape."""
    labels = np.asarray(labels, np.uint8)
    n, c = labels.shape
    bow = np.ones((n, 1), np.uint8) if bow is None else np.asarray(bow, np.uint8)
    query, train = np.sort(np.asarray(query, np.int64)), np.sort(np.asarray(train, np.int64))
    text = h5py.string_dtype()
    with h5py.File(path, "w") as f:
        f.attrs.update(dataset=dataset, n_query=len(query), n_train=len(train), split_seed=split_seed)
        f.create_dataset("ids", data=[f"s{i:04d}" for i in range(n)], dtype=text)
        f.create_dataset("image_paths", data=[str(p) for p in image_paths or [f"i{i}.png" for i in range(n)]],
                         dtype=text)
        f.create_dataset("texts", data=list(texts or ["w"] * n), dtype=text)
        f.create_dataset("labels", data=labels)
        f.create_dataset("label_names", data=list(label_names or [f"l{i}" for i in range(c)]), dtype=text)
        f.create_dataset("bow", data=bow)
        f.create_dataset("vocabulary", data=list(vocabulary or [f"w{i}" for i in range(bow.shape[1])]),
                         dtype=text)
        f.create_dataset("split/query", data=query)
        f.create_dataset("split/database", data=np.setdiff1d(np.arange(n), query))
        f.create_dataset("split/train", data=train)


def write_features(path, image, text, label_text=None) -> None:
    """Write a features file as egath.features would (float16), from random-weights `tiny`."""
    with h5py.File(path, "w") as f:
        f.attrs.update(model="tiny", pretrained="none")
        f.create_dataset("image", data=np.asarray(image).astype(np.float16))
        f.create_dataset("text", data=np.asarray(text).astype(np.float16))
        if label_text is not None:
            f.create_dataset("label_text", data=np.asarray(label_text).astype(np.float16))
