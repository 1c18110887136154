"""What `egath index` indexes: a collection of images and texts, and a trained model's inputs for it.

A collection is one of

    pairs.h5        its database split, read from the features file the model was trained on
    manifest.tsv    a user's images, texts and labels (with labels.txt; docs/formats.md)
    a folder        every image file under it, recursively: images only, no labels
    captions.txt    one caption per line: texts only, no labels

Images of a manifest or a folder go through the CLIP model that the features file names, as
extraction does (egath.features.extract_features, into a temporary folder): an image that
cannot be read stops the run naming the file (and the manifest's line), or with
unreadable_images="skip" is left out, counted and named. Texts are encoded as the model reads
them: the training vocabulary's bag-of-words, or that CLIP model's text tower.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from egath.io import open_h5, string_array

log = logging.getLogger(__name__)

MODALITIES = ("image", "text")
# files of a folder collection that are read as images (others are counted and left alone)
IMAGE_SUFFIXES = frozenset({".bmp", ".gif", ".jpeg", ".jpg", ".png", ".pbm", ".pgm", ".ppm", ".tif",
                            ".tiff", ".webp"})
KINDS = {"pairs": "database split of pairs.h5", "manifest": "manifest", "folder": "folder",
         "captions": "caption file"}


@dataclass
class ModelInputs:
    """How a model reads its inputs: the text form and vocabulary, and the CLIP model of its features."""
    text_input: str  # "bow" or "clip"
    vocabulary: list[str]  # empty for text_input "clip"
    clip_model: str
    clip_pretrained: str  # as the features file records it ("from-model-name" for hf-hub: names)

    @property
    def pretrained(self) -> str | None:
        """What egath.features.load_clip takes for the recorded weights."""
        return None if self.clip_pretrained == "from-model-name" else self.clip_pretrained

    def load_clip(self, device: str):
        from egath.features import load_clip

        return load_clip(self.clip_model, self.pretrained, device)

    def bag_of_words(self, texts: list[str]) -> torch.Tensor:
        from egath.datasets.manifest import bag_of_words

        return torch.from_numpy(bag_of_words(texts, self.vocabulary).astype(np.float32))


@dataclass
class Collection:
    kind: str  # a key of KINDS
    source: str  # absolute path of the pairs.h5, manifest, folder or caption file
    ids: list[str]
    image_paths: list[str]  # absolute; "" where items have no image
    texts: list[str]
    labels: np.ndarray  # (n, C) uint8, C = 0 without labels
    label_names: list[str]
    inputs: dict  # modality -> (n, d) float32 tensor, for each modality the collection holds

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m in MODALITIES if m in self.inputs)


def collection_kind(path) -> str:
    path = Path(path)
    if path.is_dir():
        return "folder"
    return {".h5": "pairs", ".txt": "captions"}.get(path.suffix.lower(), "manifest")


def as_cached(embedding: torch.Tensor) -> torch.Tensor:
    """A CLIP embedding rounded to float16 and back, as the features the model was trained on."""
    return torch.from_numpy(embedding.float().cpu().numpy().astype(np.float16).astype(np.float32))


def clip_text_inputs(clip, texts: list[str], device: str, batch_size: int = 256) -> torch.Tensor:
    """CLIP text embeddings (n, d) of `texts`, rounded as cached features are; clip = load_clip(...)."""
    model, _, tokenizer = clip
    with torch.inference_mode():
        return torch.cat([as_cached(model.encode_text(tokenizer(texts[i:i + batch_size]).to(device)))
                          for i in range(0, len(texts), batch_size)])


def read_collection(path, *, pairs, features, inputs: ModelInputs, tmp: Path, labels=None,
                    unreadable_images: str = "error", device: str = "cpu", batch_size: int = 256,
                    num_workers: int = 2) -> Collection:
    """The items of the collection at `path` and the model's inputs for them; `pairs` and
    `features` are the files the model was trained on, `tmp` an empty folder to work in."""
    kind = collection_kind(path)
    if kind == "pairs":
        if os.path.abspath(path) != os.path.abspath(pairs):
            raise ValueError(f"{path}: a pairs.h5 collection is the database of the pairs.h5 the model "
                             f"was trained on ({pairs}); to index other data, give its manifest.tsv, "
                             "folder or caption file")
        return _pairs_database(path, features, inputs)
    if kind == "captions":
        return _captions(path, inputs, device, batch_size)
    if kind == "folder":
        ids, image_paths, row_names = _folder_images(path)
        texts, label_rows, label_names = [""] * len(ids), np.zeros((len(ids), 0), np.uint8), []
    else:
        from egath.datasets.manifest import read_manifest

        m = read_manifest(path, labels)
        ids, image_paths, texts, label_rows, label_names = m.ids, m.image_paths, m.texts, m.labels, m.label_names
        row_names = [f"{path}:{row + 2}, id {sample_id!r}" for row, sample_id in enumerate(ids)]  # line 1: header
    image, text, kept = _extract(ids, image_paths, texts, label_names, row_names, inputs, tmp,
                                 unreadable_images, device, batch_size, num_workers)
    collection_inputs = {"image": image}
    if kind == "manifest":
        collection_inputs["text"] = inputs.bag_of_words([texts[i] for i in kept]) \
            if inputs.text_input == "bow" else text
    return Collection(kind, os.path.abspath(path), [ids[i] for i in kept],
                      [os.path.abspath(image_paths[i]) for i in kept], [texts[i] for i in kept],
                      label_rows[kept], label_names, collection_inputs)


def _pairs_database(pairs, features, inputs: ModelInputs) -> Collection:
    from egath.training import load_split_rows

    rows, data = load_split_rows(pairs, features, "database", text=inputs.text_input)  # less skipped pairs
    with open_h5(pairs, ("ids", "image_paths", "texts", "label_names")) as f:
        ids, paths, texts = (string_array(f[key][()]) for key in ("ids", "image_paths", "texts"))
        label_names = string_array(f["label_names"][()])
    return Collection("pairs", os.path.abspath(pairs), [ids[i] for i in rows],
                      # as opened from the folder the index is built in, made absolute
                      [os.path.abspath(paths[i]) for i in rows], [texts[i] for i in rows],
                      data.labels.numpy().astype(np.uint8), label_names,
                      {"image": data.image, "text": data.text})


def _folder_images(folder) -> tuple[list[str], list[str], list[str]]:
    """ids (paths relative to the folder), paths and message names of the image files under it."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise FileNotFoundError(f"{folder}: no image file under it (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    log.info("%s: %d image files%s", folder, len(images),
             f"; {len(files) - len(images)} other files left alone" if len(files) > len(images) else "")
    return ([p.relative_to(folder).as_posix() for p in images], [str(p) for p in images],
            [f"under {folder}"] * len(images))


def _captions(path, inputs: ModelInputs, device: str, batch_size: int) -> Collection:
    from egath.datasets.text import read_lines

    lines = read_lines(path)
    rows = [(number, line.strip()) for number, line in enumerate(lines, start=1) if line.strip()]
    if not rows:
        raise ValueError(f"{path}: no caption (one caption per line)")
    if len(rows) < len(lines):
        log.info("%s: %d blank lines left out", path, len(lines) - len(rows))
    texts = [text for _, text in rows]
    text = inputs.bag_of_words(texts) if inputs.text_input == "bow" else \
        clip_text_inputs(inputs.load_clip(device), texts, device, batch_size)
    return Collection("captions", os.path.abspath(path), [f"{Path(path).name}:{number}" for number, _ in rows],
                      [""] * len(rows), texts, np.zeros((len(rows), 0), np.uint8), [], {"text": text})


def _extract(ids, image_paths, texts, label_names, row_names, inputs: ModelInputs, tmp: Path,
             unreadable_images, device, batch_size, num_workers):
    """CLIP image and text features of the items (float32 tensors of the kept rows) and the rows
    kept: those whose image could be read."""
    from egath.features import extract_features

    source, features = tmp / "collection.h5", tmp / "features.h5"
    text = h5py.string_dtype()
    with h5py.File(source, "w") as f:
        f.create_dataset("ids", data=ids, dtype=text)
        f.create_dataset("image_paths", data=image_paths, dtype=text)
        f.create_dataset("texts", data=texts, dtype=text)
        f.create_dataset("label_names", data=label_names, dtype=text)
    extract_features(source, features, inputs.clip_model, inputs.pretrained, batch_size, num_workers, device,
                     unreadable_images=unreadable_images, row_names=row_names)
    with h5py.File(features) as f:
        kept = np.flatnonzero(f["image_skipped"][()] == 0)
        return (torch.from_numpy(f["image"][()][kept].astype(np.float32)),
                torch.from_numpy(f["text"][()][kept].astype(np.float32)), kept)
