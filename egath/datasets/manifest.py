"""A dataset manifest (id, image, text, labels) becomes `pairs.h5`: labels, bag-of-words, splits.

Every dataset goes through here, so the synthetic demo, the paper's datasets and a user's
own data share the same vocabulary and split logic. Formats: docs/formats.md.
"""
from __future__ import annotations

import os
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from egath.datasets.text import EMPTY_TEXT_PLACEHOLDER, EMPTY_TEXT_RULE, read_lines, tokenize
from egath.io import atomic_output

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("id", "image", "text", "labels")


@dataclass
class Manifest:
    ids: list[str]
    image_paths: list[str]  # as opened from the current directory
    texts: list[str]
    labels: np.ndarray  # (n, C) uint8 multi-hot
    label_names: list[str]
    duplicate_images: int = 0  # rows whose image an earlier row names (allow_duplicate_images)


def read_label_names(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: label list not found")
    names = [line.strip() for line in read_lines(path) if line.strip()]
    duplicated = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicated:
        raise ValueError(f"{path}: label names listed twice: {duplicated}")
    if not names:
        raise ValueError(f"{path}: no label names")
    return names


def read_manifest(manifest_path: str | Path, labels_path: str | Path | None = None,
                  check_images: bool = True, allow_empty_text: bool = False,
                  allow_duplicate_images: bool = False) -> Manifest:
    """Read and check a manifest; every problem is reported with its file and line number.

    A row whose text gives no word (EMPTY_TEXT_RULE) is an error unless `allow_empty_text`:
    in a user's own data it is more often a mistake than a choice. So is a row whose image file
    an earlier row names, unless `allow_duplicate_images`: the split could put one copy among
    the queries and the other in the training set.
    """
    manifest_path = Path(manifest_path)
    labels_path = Path(labels_path) if labels_path else manifest_path.with_name("labels.txt")
    label_names = read_label_names(labels_path)
    label_index = {name: i for i, name in enumerate(label_names)}
    if not manifest_path.exists():
        raise FileNotFoundError(f"{manifest_path}: manifest not found")

    ids, image_paths, texts, label_rows, missing, duplicates = [], [], [], [], [], []
    first_line_of_id: dict[str, int] = {}
    first_row_of_image: dict[str, tuple[int, str]] = {}  # image path -> (line, id)
    lines = read_lines(manifest_path)
    header = lines[0].split("\t") if lines else None
    if header is None or tuple(header) != MANIFEST_COLUMNS:
        raise ValueError(f"{manifest_path}: header must be {'<TAB>'.join(MANIFEST_COLUMNS)}, "
                         f"found {header!r}")
    for line_no, line in enumerate(lines[1:], start=2):
        where = f"{manifest_path}:{line_no}"
        row = line.split("\t")
        if len(row) != len(MANIFEST_COLUMNS):
            raise ValueError(f"{where}: expected {len(MANIFEST_COLUMNS)} tab-separated fields, "
                             f"found {len(row)}")
        sample_id, image, text, labels = (field.strip() for field in row)
        if not sample_id:
            raise ValueError(f"{where}: empty id")
        if sample_id in first_line_of_id:
            raise ValueError(f"{where}: duplicate id {sample_id!r} "
                             f"(first at line {first_line_of_id[sample_id]})")
        first_line_of_id[sample_id] = line_no
        if not allow_empty_text and not tokenize(text):
            raise ValueError(f"{where}: sample {sample_id!r} has an empty text {text!r}: "
                             f"{EMPTY_TEXT_RULE}. Give it a text, or set allow_empty_text "
                             f"(config: `allow_empty_text: true` for the dataset; command: "
                             f"egath pairs --allow-empty-text) to keep it with an all-zero "
                             f"bag-of-words row")
        names = [name.strip() for name in labels.split(",") if name.strip()]
        if not names:
            raise ValueError(f"{where}: sample {sample_id!r} has no labels")
        unknown = [name for name in names if name not in label_index]
        if unknown:
            raise ValueError(f"{where}: sample {sample_id!r} has labels not in {labels_path}: "
                             f"{unknown}")
        image_path = Path(os.path.normpath(manifest_path.parent / image))  # absolute stays absolute
        if check_images and not image_path.is_file():
            problem = "is a directory" if image_path.is_dir() else "not found"
            missing.append(f"{where}: image of sample {sample_id!r} {problem}: {image_path}")
        if str(image_path) in first_row_of_image:
            line, other = first_row_of_image[str(image_path)]
            duplicates.append(f"{where}: sample {sample_id!r} has the image of sample {other!r} (line {line})")
        else:
            first_row_of_image[str(image_path)] = (line_no, sample_id)
        row_labels = np.zeros(len(label_names), np.uint8)
        row_labels[[label_index[name] for name in names]] = 1
        ids.append(sample_id)
        image_paths.append(str(image_path))
        texts.append(text)
        label_rows.append(row_labels)
    if missing:
        raise FileNotFoundError(_listed(f"{manifest_path}: {len(missing)} image(s) missing or not files",
                                        missing))
    if duplicates:
        found = _listed(f"{manifest_path}: {len(duplicates)} row(s) name an image that an earlier row "
                        "names", duplicates)
        if not allow_duplicate_images:
            raise ValueError(f"{found}\nOne copy could land among the queries and the other in the "
                             "training set. Give each image one row, or set allow_duplicate_images "
                             "(config: `allow_duplicate_images: true` for the dataset) where "
                             "several rows of one image are intended")
        log.warning("%s; kept (allow_duplicate_images)", found)
    if not ids:
        raise ValueError(f"{manifest_path}: no samples")
    return Manifest(ids, image_paths, texts, np.stack(label_rows), label_names, len(duplicates))


def _listed(headline: str, problems: list[str]) -> str:
    """Every problem counted, the first ten named, rather than one per run."""
    more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
    return f"{headline}:\n  " + "\n  ".join(problems[:10]) + more


def build_vocabulary(texts: list[str], size: int) -> list[str]:
    """The `size` words that occur in the most texts (ties broken alphabetically)."""
    document_frequency = Counter(word for text in texts for word in set(tokenize(text)))
    ranked = sorted(document_frequency.items(), key=lambda item: (-item[1], item[0]))
    return [word for word, _ in ranked[:size]]


def bag_of_words(texts: list[str], vocabulary: list[str]) -> np.ndarray:
    index = {word: i for i, word in enumerate(vocabulary)}
    bow = np.zeros((len(texts), len(vocabulary)), np.uint8)
    for row, text in enumerate(texts):
        columns = [index[word] for word in tokenize(text) if word in index]
        bow[row, columns] = 1
    return bow


def split_indices(n: int, n_query: int, n_train: int, seed: int) -> dict[str, np.ndarray]:
    """One permutation: the first `n_query` rows are queries, the rest the database, of which
    the first `n_train` are the training set (the protocol of the paper and GCDH)."""
    if n_query <= 0 or n_train <= 0:
        raise ValueError(f"n_query ({n_query}) and n_train ({n_train}) must be positive")
    if n_query + n_train > n:
        raise ValueError(f"n_query + n_train = {n_query + n_train} exceeds the {n} samples")
    order = np.random.default_rng(seed).permutation(n)
    return {
        "query": np.sort(order[:n_query]),
        "database": np.sort(order[n_query:]),
        "train": np.sort(order[n_query:n_query + n_train]),
    }


def build_pairs(manifest_path: str | Path, out_path: str | Path, dataset: str, bow_dim: int,
                n_query: int, n_train: int, split_seed: int,
                labels_path: str | Path | None = None,
                allow_empty_text: bool = False, allow_duplicate_images: bool = False) -> dict[str, int]:
    """Write `pairs.h5` for a manifest. Returns the counts it logged.

    With `allow_empty_text`, a sample whose text gives no word keeps an all-zero
    bag-of-words row, as the published NUS-WIDE sets do, and its stored text (the one CLIP
    encodes) is EMPTY_TEXT_PLACEHOLDER; but a manifest none of whose texts has a word is refused.
    """
    manifest = read_manifest(manifest_path, labels_path, allow_empty_text=allow_empty_text,
                             allow_duplicate_images=allow_duplicate_images)
    vocabulary = build_vocabulary(manifest.texts, bow_dim)
    if not vocabulary:
        raise ValueError(f"{manifest_path}: none of the {len(manifest.texts)} texts has a word "
                         f"({EMPTY_TEXT_RULE}), so no method has a text to learn from: neither a "
                         "bag-of-words nor CLIP's text features (every text would be the placeholder "
                         f"{EMPTY_TEXT_PLACEHOLDER!r}). Give the samples texts")
    bow = bag_of_words(manifest.texts, vocabulary)
    empty = [not tokenize(text) for text in manifest.texts]
    encoder_texts = [EMPTY_TEXT_PLACEHOLDER if e else text for e, text in zip(empty, manifest.texts)]
    try:
        splits = split_indices(len(manifest.ids), n_query, n_train, split_seed)
    except ValueError as e:
        raise ValueError(f"{manifest_path}: {e}") from e
    empty_bow = int((bow.sum(1) == 0).sum())
    counts = {"samples": len(manifest.ids), "labels": len(manifest.label_names),
              "vocabulary": len(vocabulary), "empty_texts": sum(empty),
              "texts_without_vocabulary_words": empty_bow, "duplicate_images": manifest.duplicate_images,
              **{f"n_{name}": len(idx) for name, idx in splits.items()}}
    log.info("%s: %s", dataset, counts)

    text = h5py.string_dtype()
    with atomic_output(out_path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(dataset=dataset, n_query=n_query, n_train=n_train, split_seed=split_seed,
                       empty_text_placeholder=EMPTY_TEXT_PLACEHOLDER)
        f.create_dataset("ids", data=manifest.ids, dtype=text)
        f.create_dataset("image_paths", data=manifest.image_paths, dtype=text)
        f.create_dataset("texts", data=encoder_texts, dtype=text)
        f.create_dataset("labels", data=manifest.labels)
        f.create_dataset("label_names", data=manifest.label_names, dtype=text)
        f.create_dataset("bow", data=bow, compression="gzip", chunks=True)
        f.create_dataset("vocabulary", data=vocabulary, dtype=text)
        for name, idx in splits.items():
            f.create_dataset(f"split/{name}", data=idx.astype(np.int64))
    return counts
