"""Search a collection by text or by image with a trained model.

    index = build_index("model.pt", "index.h5", pairs="pairs.h5", features="features.h5")
    index = build_index("model.pt", "index.h5", pairs="pairs.h5", features="features.h5",
                        collection="photos/")                   # a folder, manifest or caption file
    result = search("index.h5", text="a red circle", k=10)      # the nearest images
    result = search("index.h5", image="photo.jpg", k=5)         # the nearest texts

An index holds the hash codes of a collection (egath.collection: the database of a pairs.h5, a
manifest, a folder of images or a file of captions), bit-packed, with its ids, image paths,
texts and labels, and the model's two query encoders as TorchScript programs, so that a query
needs neither the method's code nor the model file: a bag-of-words text query loads torch and
the index alone, an image query (or a text query of a model on CLIP text features) the CLIP
model too. The index records what it belongs with: the model file (path and sha256), method,
bits, dataset, the CLIP encoder of the features file and the digest of the bag-of-words
vocabulary; a model given to `search` that is not the one the index was built with is refused,
with what differs named. Queries are ranked by exact Hamming distance, ties by collection row:
the order the metrics use. Format: docs/formats.md.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np

from egath.collection import KINDS, MODALITIES, ModelInputs, as_cached, clip_text_inputs, read_collection
from egath.io import atomic_output, open_h5, string_array
from egath import lineage

log = logging.getLogger(__name__)

__all__ = ["SearchError", "OutOfVocabularyError", "Index", "Hit", "SearchResult", "build_index",
           "write_index", "load_index", "search", "named_labels"]

INDEX_FORMAT = "egath-index"
INDEX_VERSION = 2
# What must agree between a query model (model.pt and its `inputs`) and the index it searches.
_PAIRING_KEYS = ("dataset", "method", "bits", "encoder", "vocabulary_sha256")
_REBUILD = "Build it again with `egath index`."


class SearchError(ValueError):
    """A query, model or index that cannot be used; the message says why."""


class OutOfVocabularyError(SearchError):
    """A text query none of whose words the model's vocabulary holds."""


@dataclass
class Index:
    """A loaded index: metadata (the file's attributes), the collection, its codes and the
    model's query encoders."""
    path: Path
    meta: dict
    ids: list[str]
    image_paths: list[str]
    texts: list[str]
    labels: np.ndarray  # (n, C) uint8
    label_names: list[str]
    vocabulary: list[str]  # empty where the model reads CLIP text features
    codes: dict  # modality -> egath.hamming.PackedCodes, for the modalities the collection holds
    encoders: dict  # modality -> bytes: TorchScript of the model's encoder of that modality
    _queries: dict = field(default_factory=dict, repr=False)  # device -> _QueryEncoder
    _checked_models: set = field(default_factory=set, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.codes)

    @property
    def model_inputs(self) -> ModelInputs:
        return ModelInputs(self.meta["text_input"], self.vocabulary, self.meta["clip_model"],
                           self.meta["clip_pretrained"])

    def query_encoder(self, device: str) -> "_QueryEncoder":
        """The encoders of text and image queries on `device`, loaded on first use."""
        if device not in self._queries:
            self._queries[device] = _QueryEncoder(self, device)
        return self._queries[device]

    def item_labels(self, row: int) -> list[str]:
        return [self.label_names[c] for c in np.flatnonzero(self.labels[row])]


@dataclass
class Hit:
    rank: int  # 1-based
    distance: int  # Hamming distance to the query
    row: int  # row of the collection (ties are broken by it)
    id: str
    image: str
    text: str
    labels: list[str]
    shares_label: bool | None  # whether it carries one of the query's labels; None where the query has none


@dataclass
class SearchResult:
    query: dict  # {"text": ...}, {"image": ...} or {"item": row, "modality": ...}
    code: str  # the query's code, one character per bit: "1" where it is +1
    searched: str  # the modality ranked: "image" or "text"
    k: int
    bits: int
    n: int  # collection size
    unknown_words: list[str]  # words of a text query outside the vocabulary (ignored)
    query_labels: list[str]  # an item's labels, the labels a text names; none for an image file
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

def build_index(model_path, out_path, *, pairs, features, collection=None, labels=None,
                unreadable_images: str = "error", device: str = "cpu", batch_size: int = 256,
                num_workers: int = 2) -> Path:
    """Encode a collection with a trained model and write its index to `out_path` (atomically).

    `pairs` and `features` are the files the model was trained with (same dataset, split,
    labels, vocabulary and encoder, else egath.lineage.MismatchError names what differs). The
    collection is the database split of `pairs`, or `collection`: a manifest.tsv (with
    `labels`, default labels.txt beside it), a folder of images or a caption file
    (egath.collection). `unreadable_images` ("error" or "skip") decides what an image of a
    manifest or folder that cannot be read does.
    """
    from egath.encoding import encode_codes
    from egath.methods import MethodSpec, model_from_checkpoint

    ckpt = _load_checkpoint(model_path)
    facts = lineage.model_lineage(ckpt)
    spec = MethodSpec(**ckpt["method_spec"])
    files = lineage.pairs_lineage(pairs)
    lineage.check_model(model_path, ckpt, pairs, files, features)
    with open_h5(pairs, ("vocabulary",)) as f:
        vocabulary = string_array(f["vocabulary"][()]) if spec.text == "bow" else []
    with open_h5(features, ("image", "text")) as f:
        inputs = ModelInputs(spec.text, vocabulary, str(f.attrs.get("model", "")),
                             str(f.attrs.get("pretrained", "none")))
        widths = {"image": f["image"].shape[1], "text": len(vocabulary) or f["text"].shape[1]}
    model = model_from_checkpoint(ckpt).to(device).eval()

    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".egath-index-", dir=Path(out_path).parent) as tmp:
        items = read_collection(pairs if collection is None else collection, pairs=pairs, features=features,
                                inputs=inputs, tmp=Path(tmp), labels=labels,
                                unreadable_images=unreadable_images, device=device,
                                batch_size=batch_size, num_workers=num_workers)
    codes = {m: encode_codes(getattr(model, f"encode_{m}"), items.inputs[m], batch_size, device)
             for m in items.modalities}
    encoders = {m: _trace_encoder(model, m, widths[m], facts["method"]) for m in MODALITIES}
    meta = dict(
        model_path=os.path.abspath(model_path), model_sha256=file_sha256(model_path),
        method=facts["method"], text_input=spec.text, dataset=facts["dataset"], bits=facts["bits"],
        encoder=lineage.encoder_of(features), clip_model=inputs.clip_model, clip_pretrained=inputs.clip_pretrained,
        vocabulary_sha256=files["vocabulary_sha256"], collection=items.source,
        collection_kind=KINDS[items.kind])
    write_index(out_path, meta, ids=items.ids, image_paths=items.image_paths, texts=items.texts,
                labels=items.labels, label_names=items.label_names, vocabulary=vocabulary,
                codes=codes, encoders=encoders)
    log.info("indexed %d %s of %s with %s (%s, %d bits) into %s", len(items.ids),
             " and ".join(f"{m}s" for m in items.modalities), items.source, model_path,
             facts["method"], facts["bits"], out_path)
    return Path(out_path)


def _trace_encoder(model, modality: str, width: int, method: str) -> bytes:
    """The model's encoder of one modality as a TorchScript program (bytes).

    TorchScript is the one saved form of a module that loads without the code that defined
    it (here: the method's module, which imports torch_geometric, 1-2 s) and without
    torch.export's loader (a further 2 s of imports). Tracing records the operations run on
    an example; the program is checked against the model on inputs of another batch size, so
    an encoder that the trace fixed to its example is refused rather than saved.
    """
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return getattr(self.model, f"encode_{modality}")(x)

    generator = torch.Generator().manual_seed(0)
    example, check = (torch.rand(rows, width, generator=generator) for rows in (2, 5))
    with warnings.catch_warnings():
        # TorchScript's deprecation notices, and the tracer's about torch's own shape checks
        # (nn.MultiheadAttention's): the check below is what tells
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        program = torch.jit.trace(Encoder().eval(), example)
        with torch.no_grad():
            if not torch.allclose(program(check), Encoder().eval()(check), rtol=1e-4, atol=1e-5):
                raise SearchError(f"method {method}: its {modality} encoder, saved for the index, "
                                  "does not reproduce the model")
        buffer = io.BytesIO()
        torch.jit.save(program, buffer)
    return buffer.getvalue()


def write_index(path, meta: dict, *, ids, image_paths, texts, labels, label_names, vocabulary,
                codes: dict, encoders: dict) -> Path:
    """Write an index file (atomically): `meta` holds the attributes build_index records (the
    format, size and modalities are set here: the meta of a loaded index can be passed),
    `codes` maps each modality the collection holds to its codes (n, bits) (a bit is set where
    > 0), `encoders` each modality to the TorchScript of the model's encoder."""
    text = h5py.string_dtype()
    with atomic_output(path) as tmp_path, h5py.File(tmp_path, "w") as f:
        f.attrs.update({**meta, "format": INDEX_FORMAT, "format_version": INDEX_VERSION, "n": len(ids),
                        "modalities": ",".join(m for m in MODALITIES if m in codes)})
        for key, values in (("ids", ids), ("image_paths", image_paths), ("texts", texts),
                            ("label_names", label_names), ("vocabulary", vocabulary)):
            f.create_dataset(key, data=values, dtype=text)
        f.create_dataset("labels", data=np.asarray(labels, np.uint8).reshape(len(ids), len(label_names)))
        for modality, values in codes.items():
            # np.packbits order: bit t of a code is bit 7 - t % 8 of byte t // 8; set where the code is +1
            f.create_dataset(f"codes/{modality}", data=np.packbits(np.asarray(values) > 0, axis=1))
        for modality, program in encoders.items():
            f.create_dataset(f"encoders/{modality}", data=np.frombuffer(program, np.uint8))
    return Path(path)


# --------------------------------------------------------------------------- loading

def load_index(path) -> Index:
    """Read an index file; SearchError if it is not one (or of another format version)."""
    from egath.hamming import pack_codes

    keys = ("ids", "image_paths", "texts", "labels", "label_names", "vocabulary",
            *(f"encoders/{m}" for m in MODALITIES))
    with open_h5(path, remedy=_REBUILD) as f:
        meta = {k: (v.decode() if isinstance(v, bytes) else v.item() if isinstance(v, np.generic) else v)
                for k, v in f.attrs.items()}
        if meta.get("format") != INDEX_FORMAT or meta.get("format_version") != INDEX_VERSION:
            raise SearchError(f"{path}: not an egath index of format version {INDEX_VERSION} "
                              f"(format {meta.get('format')!r}, version {meta.get('format_version')!r}). "
                              + _REBUILD)
        modalities = meta["modalities"].split(",")
        missing = [key for key in (*keys, *(f"codes/{m}" for m in modalities)) if key not in f]
        if missing:
            raise SearchError(f"{path}: missing datasets {missing}. {_REBUILD}")
        bits = int(meta["bits"])
        codes = {m: pack_codes(np.unpackbits(f[f"codes/{m}"][()], axis=1, count=bits), f"{path}: codes/{m}")
                 for m in modalities}
        return Index(path=Path(path), meta=meta, ids=string_array(f["ids"][()]),
                     image_paths=string_array(f["image_paths"][()]), texts=string_array(f["texts"][()]),
                     labels=f["labels"][()], label_names=string_array(f["label_names"][()]),
                     vocabulary=string_array(f["vocabulary"][()]), codes=codes,
                     encoders={m: f[f"encoders/{m}"][()].tobytes() for m in MODALITIES})


# --------------------------------------------------------------------------- queries

class _QueryEncoder:
    """The index's saved encoders and, when a query needs it, its CLIP model."""

    def __init__(self, index: Index, device: str):
        import torch

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
            self.programs = {m: torch.jit.load(io.BytesIO(program), map_location=device)
                             for m, program in index.encoders.items()}
        self.index, self.device = index, device
        self._clip = None

    def clip(self):
        if self._clip is None:
            self._clip = self.index.model_inputs.load_clip(self.device)
        return self._clip

    def text(self, text: str) -> tuple[np.ndarray, list[str]]:
        """Code (1, bits) of a text, and its words outside the vocabulary."""
        from egath.datasets.text import tokenize

        words = tokenize(text)
        if not words:
            raise SearchError(f"the text query {text!r} holds no word: type a few words")
        unknown = []
        if self.index.meta["text_input"] == "bow":
            vocabulary = self.index.vocabulary
            known = set(vocabulary)
            unknown = [w for w in words if w not in known]
            if len(unknown) == len(words):
                raise OutOfVocabularyError(
                    f"none of the words of the text query {text!r} is in the model's vocabulary "
                    f"({len(vocabulary)} words of dataset {self.index.meta['dataset']!r}, e.g. "
                    f"{', '.join(vocabulary[:8])}), so every item would be equally far")
            x = self.index.model_inputs.bag_of_words([text])
        else:
            x = clip_text_inputs(self.clip(), [text], self.device)
        return self._code("text", x), unknown

    def image(self, image) -> np.ndarray:
        """Code (1, bits) of an image: a path or a binary file object."""
        import torch

        from egath.features import open_image

        model, preprocess, _ = self.clip()
        try:
            x = preprocess(open_image(image)).unsqueeze(0)
        except (OSError, ValueError) as e:  # missing, not an image, truncated, too large
            raise SearchError(f"cannot read the image query {_image_name(image)!r}: {e}") from e
        with torch.inference_mode():
            return self._code("image", as_cached(model.encode_image(x.to(self.device))))

    def _code(self, modality: str, x) -> np.ndarray:
        import torch

        with torch.inference_mode():
            h = self.programs[modality](x.to(self.device))
        return (h >= 0).cpu().numpy()  # sign(0) = +1, as egath.methods.base.binarize


def _image_name(image) -> str:
    """A path as given; a file object by its name, where it has one."""
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    return getattr(image, "name", None) or "uploaded image"


def check_model(index: Index, model_path) -> None:
    """SearchError unless `model_path` is the model the index was built with (what differs named)."""
    if model_path in index._checked_models:
        return
    meta = index.meta
    if file_sha256(model_path) != meta["model_sha256"]:
        model = lineage.model_lineage(_load_checkpoint(model_path))
        diffs = [f"{key}: model {model[key]}, index {meta[key]}" for key in lineage.differing(model, meta, _PAIRING_KEYS)]
        raise SearchError(
            f"model {model_path} is not the model index {index.path} was built with "
            f"({meta['model_path']}): " + "; ".join(diffs + ["weights: sha256 differs"])
            + "; build an index with this model (`egath index`) or use the index's model")
    index._checked_models.add(model_path)


def named_labels(text: str, label_names: list[str]) -> list[str]:
    """The label names that a text names: each whose words occur in it, in order."""
    from egath.datasets.text import tokenize

    words = f" {' '.join(tokenize(text))} "
    return [name for name in label_names if tokenize(name) and f" {' '.join(tokenize(name))} " in words]


def search(index, text: str | None = None, image=None, item: tuple[str, int] | None = None, k: int = 10,
           same_modality: bool = False, model=None, device: str = "cpu") -> SearchResult:
    """The k items of `index` (a path or a loaded Index) nearest to one query: a text, an
    image (a path or a binary file object) or an item of the index (`("image", row)` or
    `("text", row)`, its stored code).

    A text query ranks the images, an image query the texts; with `same_modality` the query's
    own modality; an index that holds one modality (a folder, a caption file) always ranks that
    one. Exact Hamming ranking, ties by collection row. `model`, where given, must be the model
    the index was built with. Raises OutOfVocabularyError for a text none of whose words is in
    the vocabulary, SearchError for other unusable queries, models or indexes.
    """
    from egath.hamming import PackedCodes, hamming_topk

    if sum(q is not None for q in (text, image, item)) != 1:
        raise SearchError("give exactly one query: a text, an image or an item of the index")
    if int(k) < 1:
        raise SearchError(f"k must be at least 1, got {k}")
    if not isinstance(index, Index):
        index = load_index(index)
    if model is not None:
        check_model(index, os.path.abspath(model))

    bits = int(index.meta["bits"])
    unknown, query_labels = [], []
    if item is not None:
        modality, row = item[0], int(item[1])
        if modality not in index.codes or not 0 <= row < len(index):
            raise SearchError(f"{index.path} holds no {modality} at row {row} "
                              f"(it holds {' and '.join(index.modalities)} of rows 0..{len(index) - 1})")
        code = PackedCodes(index.codes[modality].words[:, [row]], bits)
        query, query_labels = {"item": row, "modality": modality}, index.item_labels(row)
    else:
        encoder = index.query_encoder(device)
        if text is not None:
            modality, (code, unknown) = "text", encoder.text(text)
            query, query_labels = {"text": text}, named_labels(text, index.label_names)
        else:
            modality, code = "image", encoder.image(image)
            query = {"image": _image_name(image)}
    searched = modality if same_modality else ("text" if modality == "image" else "image")
    if searched not in index.codes:
        searched = index.modalities[0]
    rows, distances = hamming_topk(code, index.codes[searched], int(k), threads=1)
    wanted = set(query_labels)
    hits = [Hit(rank=r + 1, distance=int(d), row=int(i), id=index.ids[i], image=index.image_paths[i],
                text=index.texts[i], labels=index.item_labels(i),
                shares_label=bool(wanted & set(index.item_labels(i))) if wanted else None)
            for r, (i, d) in enumerate(zip(rows[0], distances[0]))]
    code_bits = code if isinstance(code, np.ndarray) else \
        np.unpackbits(code.words[:, 0].view(np.uint8), bitorder="little")[:bits]
    return SearchResult(query=query, code="".join("1" if b else "0" for b in np.ravel(code_bits)),
                        searched=searched, k=int(k), bits=bits, n=len(index), unknown_words=unknown,
                        query_labels=query_labels, hits=hits)
