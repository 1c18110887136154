"""Search a collection by text or by image with a trained model.

    index = build_index("model.pt", "index.h5", pairs="pairs.h5", features="features.h5")
    result = search("index.h5", text="a red circle", k=10)      # the nearest images
    result = search("index.h5", image="photo.jpg", k=5)         # the nearest texts

An index holds the hash codes of both modalities of a collection (bit-packed) with its ids,
image paths, texts and labels, and records what it belongs with: the model file (path and
sha256), method, bits, dataset, the CLIP encoder of the features file and the digest of the
bag-of-words vocabulary. A query is encoded as training encoded its inputs (the vocabulary
and tokenizer of pairs.h5, or the same CLIP model for images) and ranked by exact Hamming
distance, ties by collection row: the order the metrics use. A model that is not the one the
index was built with is refused, with what differs named. Format: docs/formats.md.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np

from egath.io import atomic_output, open_h5, string_array
from egath.provenance import differences, encoder_of, model_facts

log = logging.getLogger(__name__)

__all__ = ["SearchError", "OutOfVocabularyError", "Index", "Hit", "SearchResult", "build_index",
           "load_index", "search"]

INDEX_FORMAT = "egath-index"
INDEX_VERSION = 1
MODALITIES = ("image", "text")
# What must agree between a query model (model.pt and its `inputs`) and the index it searches.
_PAIRING_KEYS = ("dataset", "method", "bits", "encoder", "vocabulary_sha256")


class SearchError(ValueError):
    """A query, model or index that cannot be used; the message says why."""


class OutOfVocabularyError(SearchError):
    """A text query none of whose words the model's vocabulary holds."""


@dataclass
class Index:
    """A loaded index: metadata (the file's attributes), the collection and its codes."""
    path: Path
    meta: dict
    ids: list[str]
    image_paths: list[str]
    texts: list[str]
    labels: np.ndarray  # (n, C) uint8
    label_names: list[str]
    vocabulary: list[str]  # empty where the model reads CLIP text features
    codes: dict  # modality -> egath.hamming.PackedCodes
    _encoders: dict = field(default_factory=dict, repr=False)  # (model path, device) -> _QueryEncoder

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Hit:
    rank: int  # 1-based
    distance: int  # Hamming distance to the query
    row: int  # row of the collection (ties are broken by it)
    id: str
    image: str
    text: str
    labels: list[str]


@dataclass
class SearchResult:
    query: dict  # {"text": ...} or {"image": ...}
    code: str  # the query's code, one character per bit: "1" where it is +1
    searched: str  # the modality ranked: "image" or "text"
    k: int
    bits: int
    n: int  # collection size
    unknown_words: list[str]  # words of a text query outside the vocabulary (ignored)
    hits: list[Hit]

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- files

def file_sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _load_checkpoint(model_path) -> dict:
    import torch

    if not Path(model_path).is_file():
        raise FileNotFoundError(f"{model_path}: model file not found")
    return torch.load(model_path, map_location="cpu", weights_only=False)


# --------------------------------------------------------------------------- building

def build_index(model_path, out_path, *, pairs, features, manifest=None, labels=None,
                device: str = "cpu", batch_size: int = 256, num_workers: int = 2) -> Path:
    """Encode a collection with a trained model and write its index to `out_path` (atomically).

    The collection is the database split of `pairs` (whose rows `features` holds), or, with
    `manifest` (manifest.tsv and its labels.txt, docs/formats.md), a user's images and texts:
    then images (and texts, for a model on CLIP text features) are encoded with the CLIP
    model that `features` names in its provenance, and texts with the vocabulary of `pairs`.
    `pairs` and `features` must be the files the model was trained with (same dataset, split,
    labels, vocabulary and encoder), else egath.lineage.MismatchError names what differs.
    """
    from egath.encoding import encode_codes
    from egath.lineage import check_model, pairs_lineage
    from egath.methods import MethodSpec, model_from_checkpoint
    from egath.training import load_split, split_rows

    ckpt = _load_checkpoint(model_path)
    facts = model_facts(ckpt)
    spec = MethodSpec(**ckpt["method_spec"])
    files = pairs_lineage(pairs)
    check_model(model_path, ckpt, pairs, files, features)
    with open_h5(pairs, ("vocabulary",)) as f:
        vocabulary = string_array(f["vocabulary"][()]) if spec.text == "bow" else []
    with open_h5(features) as f:
        clip_model = str(f.attrs.get("model", ""))
        clip_pretrained = str(f.attrs.get("pretrained", "none"))
    model = model_from_checkpoint(ckpt).to(device).eval()

    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".egath-index-", dir=Path(out_path).parent) as tmp:
        if manifest is None:
            source, source_features, split = pairs, features, "database"
        else:
            source, source_features, split = _encode_manifest(
                manifest, labels, vocabulary, clip_model, clip_pretrained, Path(tmp),
                device, batch_size, num_workers)
        data = load_split(source, source_features, split, text=spec.text)
        rows = split_rows(source, source_features, split)  # the same rows, pairs left out at extraction too
        with open_h5(source, ("ids", "image_paths", "texts", "label_names")) as f:
            collection = {}
            for key in ("ids", "image_paths", "texts"):
                values = string_array(f[key][()])
                collection[key] = [values[i] for i in rows]
            label_names = string_array(f["label_names"][()])
        codes = {"image": encode_codes(model.encode_image, data.image, batch_size, device),
                 "text": encode_codes(model.encode_text, data.text, batch_size, device)}

    text = h5py.string_dtype()
    with atomic_output(out_path) as tmp_path, h5py.File(tmp_path, "w") as f:
        f.attrs.update(
            format=INDEX_FORMAT, format_version=INDEX_VERSION,
            model_path=os.path.abspath(model_path), model_sha256=file_sha256(model_path),
            method=facts["method"], text_input=spec.text, dataset=facts["dataset"],
            bits=facts["bits"], encoder=encoder_of(features), clip_model=clip_model,
            clip_pretrained=clip_pretrained, vocabulary_sha256=files["vocabulary_sha256"],
            collection=os.path.abspath(manifest if manifest is not None else pairs),
            collection_kind="manifest" if manifest is not None else "database split of pairs.h5",
            n=len(collection["ids"]))
        for key in ("ids", "texts"):
            f.create_dataset(key, data=collection[key], dtype=text)
        # as opened from the folder the index was built in, made absolute
        f.create_dataset("image_paths", data=[os.path.abspath(p) for p in collection["image_paths"]],
                         dtype=text)
        f.create_dataset("labels", data=data.labels.numpy().astype(np.uint8))
        f.create_dataset("label_names", data=label_names, dtype=text)
        f.create_dataset("vocabulary", data=vocabulary, dtype=text)
        for modality in MODALITIES:
            # np.packbits order: bit t of a code is bit 7 - t % 8 of byte t // 8; set where the code is +1
            f.create_dataset(f"codes/{modality}", data=np.packbits(codes[modality] > 0, axis=1))
    log.info("indexed %d items of %s with %s (%s, %d bits) into %s", len(collection["ids"]),
             manifest if manifest is not None else pairs, model_path, facts["method"],
             facts["bits"], out_path)
    return Path(out_path)


def _encode_manifest(manifest, labels, vocabulary, clip_model, clip_pretrained, tmp: Path,
                     device, batch_size, num_workers):
    """A user's manifest as a pairs-like file and its CLIP features, in `tmp`."""
    from egath.datasets.manifest import bag_of_words, read_manifest
    from egath.features import extract_features

    m = read_manifest(manifest, labels)
    n = len(m.ids)
    bow = bag_of_words(m.texts, vocabulary) if vocabulary else np.zeros((n, 1), np.uint8)
    source, source_features = tmp / "collection.h5", tmp / "features.h5"
    text = h5py.string_dtype()
    with h5py.File(source, "w") as f:
        f.create_dataset("ids", data=m.ids, dtype=text)
        f.create_dataset("image_paths", data=m.image_paths, dtype=text)
        f.create_dataset("texts", data=m.texts, dtype=text)
        f.create_dataset("labels", data=m.labels)
        f.create_dataset("label_names", data=m.label_names, dtype=text)
        f.create_dataset("bow", data=bow)
        f.create_dataset("split/all", data=np.arange(n, dtype=np.int64))
    pretrained = None if clip_pretrained == "from-model-name" else clip_pretrained
    extract_features(source, source_features, clip_model, pretrained, batch_size, num_workers, device)
    return source, source_features, "all"


# --------------------------------------------------------------------------- loading

def load_index(path) -> Index:
    """Read an index file; SearchError if it is not one (or of another format version)."""
    from egath.hamming import pack_codes

    keys = ("ids", "image_paths", "texts", "labels", "label_names", "vocabulary",
            "codes/image", "codes/text")
    with open_h5(path, keys) as f:
        meta = {k: (v.decode() if isinstance(v, bytes) else v.item() if isinstance(v, np.generic) else v)
                for k, v in f.attrs.items()}
        if meta.get("format") != INDEX_FORMAT or meta.get("format_version") != INDEX_VERSION:
            raise SearchError(f"{path}: not an egath index of format version {INDEX_VERSION} "
                              f"(format {meta.get('format')!r}, version {meta.get('format_version')!r}); "
                              "build it again with `egath index`")
        bits = int(meta["bits"])
        codes = {m: pack_codes(np.unpackbits(f[f"codes/{m}"][()], axis=1, count=bits), f"{path}: codes/{m}")
                 for m in MODALITIES}
        return Index(path=Path(path), meta=meta, ids=string_array(f["ids"][()]),
                     image_paths=string_array(f["image_paths"][()]), texts=string_array(f["texts"][()]),
                     labels=f["labels"][()], label_names=string_array(f["label_names"][()]),
                     vocabulary=string_array(f["vocabulary"][()]), codes=codes)


# --------------------------------------------------------------------------- queries

class _QueryEncoder:
    """The index's hashing model (checked against the index) and, when needed, its CLIP model."""

    def __init__(self, index: Index, model_path, device: str):
        from egath.methods import model_from_checkpoint

        meta = index.meta
        if model_path is None:
            model_path = meta["model_path"]
            if not Path(model_path).is_file():
                raise SearchError(f"{index.path}: the model it was built with, {model_path}, is gone; "
                                  "give the model file with --model (model=...)")
        if file_sha256(model_path) != meta["model_sha256"]:
            ckpt = _load_checkpoint(model_path)
            diffs = differences(model_facts(ckpt), meta, _PAIRING_KEYS, ("model", "index"))
            raise SearchError(
                f"model {model_path} is not the model index {index.path} was built with "
                f"({meta['model_path']}): " + "; ".join(diffs + ["weights: sha256 differs"])
                + "; build an index with this model (`egath index`) or use the index's model")
        ckpt = _load_checkpoint(model_path)
        self.model = model_from_checkpoint(ckpt).to(device).eval()
        self.index, self.device = index, device
        self._clip = None

    def clip(self):
        if self._clip is None:
            from egath.features import load_clip

            pretrained = self.index.meta["clip_pretrained"]
            self._clip = load_clip(self.index.meta["clip_model"],
                                   None if pretrained == "from-model-name" else pretrained, self.device)
        return self._clip

    def _as_cached(self, embedding):
        # the model was trained on float16 features: round the same way
        import torch

        return torch.from_numpy(embedding.float().cpu().numpy().astype(np.float16).astype(np.float32))

    def text(self, text: str) -> tuple[np.ndarray, list[str]]:
        """Code (1, bits) of a text, and its words outside the vocabulary."""
        import torch

        from egath.datasets.manifest import bag_of_words, tokenize

        unknown = []
        with torch.inference_mode():
            if self.index.meta["text_input"] == "bow":
                vocabulary = self.index.vocabulary
                known = set(vocabulary)
                words = tokenize(text)
                unknown = [w for w in words if w not in known]
                if not words:
                    raise OutOfVocabularyError(f"the text query {text!r} holds no word")
                if len(unknown) == len(words):
                    raise OutOfVocabularyError(
                        f"none of the words of the text query {text!r} is in the model's vocabulary "
                        f"({len(vocabulary)} words of dataset {self.index.meta['dataset']!r}, e.g. "
                        f"{', '.join(vocabulary[:8])}), so every item would be equally far")
                x = torch.from_numpy(bag_of_words([text], vocabulary).astype(np.float32))
            else:
                model, _, tokenizer = self.clip()
                x = self._as_cached(model.encode_text(tokenizer([text]).to(self.device)))
            return self._sign(self.model.encode_text(x.to(self.device))), unknown

    def image(self, path) -> np.ndarray:
        """Code (1, bits) of an image file."""
        import torch

        from egath.features import open_image

        model, preprocess, _ = self.clip()
        try:
            x = preprocess(open_image(path)).unsqueeze(0)
        except (OSError, ValueError) as e:  # missing, not an image, truncated, too large
            raise SearchError(f"cannot read the image query {str(path)!r}: {e}") from e
        with torch.inference_mode():
            embedding = self._as_cached(model.encode_image(x.to(self.device)))
            return self._sign(self.model.encode_image(embedding.to(self.device)))

    @staticmethod
    def _sign(h) -> np.ndarray:
        return (h >= 0).cpu().numpy()  # sign(0) = +1, as egath.methods.base.binarize


def search(index, text: str | None = None, image=None, k: int = 10, same_modality: bool = False,
           model=None, device: str = "cpu") -> SearchResult:
    """The k items of `index` (a path or a loaded Index) nearest to a text or an image query.

    A text query ranks the images (a text query ranks texts with `same_modality`); an image
    query ranks the texts (images with `same_modality`). Exact Hamming ranking, ties by
    collection row. `model` (default: the path the index records) must be the model the index
    was built with. Raises OutOfVocabularyError for a text none of whose words is in the
    vocabulary, SearchError for other unusable queries, models or indexes.
    """
    from egath.hamming import hamming_topk

    if (text is None) == (image is None):
        raise SearchError("give exactly one query: a text or an image")
    if int(k) < 1:
        raise SearchError(f"k must be at least 1, got {k}")
    if not isinstance(index, Index):
        index = load_index(index)
    key = (None if model is None else os.path.abspath(model), device)
    if key not in index._encoders:
        index._encoders[key] = _QueryEncoder(index, model, device)
    encoder = index._encoders[key]

    if text is not None:
        code, unknown = encoder.text(text)
        query, searched = {"text": text}, "text" if same_modality else "image"
    else:
        code, unknown = encoder.image(image), []
        query, searched = {"image": str(image)}, "image" if same_modality else "text"
    rows, distances = hamming_topk(code, index.codes[searched], int(k), threads=1)
    hits = [Hit(rank=r + 1, distance=int(d), row=int(i), id=index.ids[i], image=index.image_paths[i],
                text=index.texts[i], labels=[index.label_names[c] for c in np.flatnonzero(index.labels[i])])
            for r, (i, d) in enumerate(zip(rows[0], distances[0]))]
    return SearchResult(query=query, code="".join("1" if b else "0" for b in code[0]), searched=searched, k=int(k), bits=int(index.meta["bits"]),
                        n=len(index), unknown_words=unknown, hits=hits)
