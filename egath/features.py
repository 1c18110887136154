"""CLIP feature extraction: ``pairs.h5`` -> ``features/{encoder}.h5``.

The output stores the *raw* (not L2-normalised) open_clip embeddings as float16:
``image`` and ``text`` (n, d), chunked by rows, and ``label_text`` (C, d), the text
embeddings of the prompt ``"a photo of a {label}."`` for each label name. Downstream
code normalises when it needs to. See ``docs/formats.md`` for the attributes.

Images are read as RGB: 16-bit and 32-bit grey images are scaled to 8 bits, not clipped.
An image of more than ``max_image_pixels`` pixels is refused before it is decoded. With
``unreadable_images="skip"`` an image that cannot be read is left out instead of stopping the
run: its row is listed in the ``image_skipped`` dataset (and in the log), and
``egath.training.load_split`` leaves those pairs out of every split.

Extraction is resumable and atomic. It writes ``{out_h5}.partial`` and records after each
batch how many rows are done (``n_done_image``, ``n_done_text``). A rerun with the same
inputs and settings continues from there; anything else starts over. The finished file
is moved onto ``out_h5`` with ``os.replace``, so ``out_h5`` is never half-written.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import signal
import stat
import sys
import threading
from pathlib import Path

import h5py
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from egath.io import check_finite, files_digest, open_h5, strings_digest
from egath.naming import looks_like_path, normalise_pretrained

__all__ = [
    "FeatureInputError",
    "LABEL_PROMPT",
    "register_model_configs",
    "load_clip",
    "extract_features",
]

LABEL_PROMPT = "a photo of a {label}."
MODEL_CONFIG_DIR = Path(__file__).with_name("model_configs")
CHUNK_ROWS = 1024
_SCHEMAS = ("hf-hub:", "local-dir:")
_EXAMPLE_MODELS = ("ViT-B-32", "ViT-B-16", "ViT-L-14", "RN50", "egath-tiny-vit")
# Attributes that only make sense in the .partial file; dropped from the finished file.
_RESUME_ATTRS = ("resume_key", "n_done_image", "n_done_text")
# PIL's own default limit (Image.MAX_IMAGE_PIXELS): about 89 megapixels.
MAX_IMAGE_PIXELS = 89_478_485
UNREADABLE_POLICIES = ("error", "skip")
_PIXELS_HINT = ("raise max_image_pixels to read it (decoding and resizing take about 4 bytes per "
                "pixel of memory), or skip such images with unreadable_images: skip (workflow "
                "config: clip.max_image_pixels, clip.unreadable_images; `egath features` and "
                "`egath index`: --unreadable-images skip)")
_SKIP_HINT = ("To leave out the images that cannot be read, with a list in the log, set "
              "unreadable_images: skip (workflow config: clip.unreadable_images; `egath features` "
              "and `egath index`: --unreadable-images skip)")

_registered: set[str] = set()


class FeatureInputError(ValueError):
    """The inputs (pairs file or images) are unusable; nothing is written to out_h5."""


# --------------------------------------------------------------------------- models


def register_model_configs() -> list[str]:
    """Register the package's open_clip configs (``egath/model_configs/*.json``).

    Idempotent. Returns the names of the package's models (file stems).
    """
    import open_clip

    names = []
    for path in sorted(MODEL_CONFIG_DIR.glob("*.json")):
        names.append(path.stem)
        # open_clip.list_models() is checked too, so a registry reset elsewhere is repaired.
        if str(path) not in _registered or path.stem not in open_clip.list_models():
            open_clip.add_model_config(path)
            _registered.add(str(path))
    return names


def _offline_hint(model_name: str, tag: str) -> str:
    return (
        "This machine may be offline (no network, or HF_HUB_OFFLINE=1). Download the "
        "checkpoint on a machine with network access, copy it here and give its local file "
        "path as `pretrained` in the workflow config, e.g. in config.yaml "
        f"`clip: {{model: {model_name}, pretrained: /path/to/open_clip_model.safetensors}}`; "
        "or use `pretrained: none` for random weights."
    )


def load_clip(model_name: str, pretrained=None, device="cpu"):
    """Create an open_clip model. Returns ``(model, preprocess, tokenizer)``.

    ``pretrained``: ``None``/``"none"`` for random weights (seeded with
    ``torch.manual_seed(0)``, so they are the same on every run; the global RNG state is
    left untouched), an open_clip tag such as ``"openai"``, or a local checkpoint path.
    ``hf-hub:``/``local-dir:`` model names bring their own weights; ``pretrained`` is then
    ignored. OpenAI tags get QuickGELU, as those weights were trained with it (for a local
    copy of OpenAI weights use the ``-quickgelu`` model name, e.g. ``ViT-B-32-quickgelu``).
    The model is returned in eval mode with gradients off.

    Raises ``ValueError`` for an unknown model name or pretrained tag,
    ``FileNotFoundError`` for a missing checkpoint file and ``RuntimeError`` when the
    weights cannot be loaded (typically: offline).
    """
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    register_model_configs()
    tag = normalise_pretrained(pretrained)
    has_schema = model_name.startswith(_SCHEMAS)
    kwargs = {}

    if not has_schema:
        available = open_clip.list_models()
        if model_name.replace("/", "-") not in available:
            close = difflib.get_close_matches(model_name, available, n=5, cutoff=0.5)
            hint = f"did you mean {close}? " if close else ""
            raise ValueError(
                f"unknown open_clip model {model_name!r}: {hint}available models include "
                f"{[m for m in _EXAMPLE_MODELS if m in available]} ({len(available)} in all, "
                "see open_clip.list_models())"
            )

    source = "schema" if has_schema else "random"
    if tag != "none" and not has_schema:
        cfg_name = model_name.replace("/", "-")
        tag_cfg = get_pretrained_cfg(cfg_name, tag)
        if tag_cfg:
            source = "tag"
            # OpenAI weights were trained with QuickGELU; the plain config uses GELU.
            model_cfg = open_clip.get_model_config(cfg_name) or {}
            if tag_cfg.get("quick_gelu") and not model_cfg.get("quick_gelu"):
                kwargs["force_quick_gelu"] = True
        elif os.path.isfile(tag):
            source = "file"
        elif looks_like_path(tag):
            raise FileNotFoundError(
                f"checkpoint file {tag!r} for model {model_name!r} does not exist"
            )
        else:
            raise ValueError(
                f"pretrained {tag!r} is neither a known tag of model {model_name!r} "
                f"(known tags: {list_pretrained_tags_by_model(cfg_name)}) nor an existing "
                "checkpoint file"
            )

    try:
        # Seeded always: random weights (or tensors a checkpoint does not cover) are then
        # the same on every run; fork_rng keeps the caller's RNG state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name,
                pretrained=None if (has_schema or tag == "none") else tag,
                device=device,
                **kwargs,
            )
    except Exception as e:
        if source == "file":
            raise RuntimeError(
                f"could not load checkpoint {tag!r} into open_clip model {model_name!r} "
                f"(wrong model for this checkpoint?): {e}"
            ) from e
        if source == "random":
            raise
        raise RuntimeError(
            f"the weights for model {model_name!r} with pretrained {tag!r} could not be "
            f"loaded: {type(e).__name__}: {e}. " + _offline_hint(model_name, tag)
        ) from e
    model.eval()
    model.requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(model_name)
    return model, preprocess, tokenizer


# --------------------------------------------------------------------------- inputs


def _read_pairs(pairs_h5: Path) -> dict:
    if not pairs_h5.is_file():
        raise FileNotFoundError(f"pairs file {str(pairs_h5)!r} does not exist")
    try:
        with open_h5(pairs_h5, required=("image_paths", "texts", "label_names")) as f:
            out = {key: [str(s) for s in f[key].asstr()[()]]
                   for key in ("image_paths", "texts", "label_names")}
            out["ids"] = [str(s) for s in f["ids"].asstr()[()]] if "ids" in f else None
            out["dataset"] = str(f.attrs.get("dataset", ""))
    except (OSError, ValueError, TypeError, KeyError) as e:  # unreadable, truncated, incomplete
        raise FeatureInputError(f"cannot use pairs file {str(pairs_h5)!r} (see docs/formats.md): {e}") from e
    n = len(out["image_paths"])
    if n == 0:
        raise FeatureInputError(f"pairs file {str(pairs_h5)!r} has no rows")
    if len(out["texts"]) != n or (out["ids"] is not None and len(out["ids"]) != n):
        raise FeatureInputError(
            f"pairs file {str(pairs_h5)!r}: image_paths, texts and ids differ in length"
        )
    return out


def _row_name(row: int, ids) -> str:
    return f"row {row}" + (f", id {ids[row]!r}" if ids is not None else "")


def _check_image_files(paths, ids, pairs_h5: Path) -> None:
    """Fail early, naming every path (the first ten and the count) that is not a file."""
    problems = []
    for row, p in enumerate(paths):
        try:
            if not stat.S_ISREG(os.stat(p).st_mode):
                problems.append((row, "is a directory or other non-file"))
        except FileNotFoundError:
            problems.append((row, "does not exist (or is a link to nothing)"))
        except OSError as e:  # a link loop, a folder without search permission
            problems.append((row, f"cannot be looked up: {e.strerror}"))
    if problems:
        shown = "; ".join(f"{paths[r]!r} {what} ({_row_name(r, ids)})" for r, what in problems[:10])
        more = f"; and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise FeatureInputError(
            f"{len(problems)} image path(s) listed in {str(pairs_h5)!r} are not image files "
            f"(paths are opened relative to {os.getcwd()!r}): {shown}{more}"
        )


def to_rgb(im: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of any image PIL opens.

    PIL's convert("RGB") clips 16- and 32-bit grey values at 255, so a 16-bit PNG would turn
    (nearly) white; such images are scaled to 8 bits instead. 32-bit integer ("I") images are
    read as 16-bit when a value exceeds 255 (PGM and TIFF store 16-bit grey that way), float
    ("F") images as 0..1 or 0..255. Other ranges are refused rather than guessed.
    """
    if im.mode.startswith("I;16"):
        grey = np.asarray(im).astype(np.float64) / 257.0
    elif im.mode in ("I", "F"):
        values = np.asarray(im, dtype=np.float64)
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if im.mode == "F" and lo >= 0 and hi <= 1:
            grey = values * 255.0
        elif lo >= 0 and hi <= 255:
            grey = values
        elif im.mode == "I" and lo >= 0 and hi <= 65535:
            grey = values / 257.0
        else:
            raise ValueError(f"{'float' if im.mode == 'F' else '32-bit integer'} grey pixels "
                             f"from {lo:g} to {hi:g}: save the image with 8 or 16 bits per channel")
    else:
        return im.convert("RGB")
    return Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8), "L").convert("RGB")


def open_image(path, max_pixels: int = MAX_IMAGE_PIXELS, shortest_side: int | None = None) -> Image.Image:
    """Open an image as 8-bit RGB; refuse, before decoding it, one of more than `max_pixels`
    pixels, or one that resizing its shortest side to `shortest_side` (the encoder's
    preprocessing) would make larger than that: a 200,000 x 1 image has few pixels, but
    resized to a shortest side of 64 it has 819 million.

    PIL's own decompression-bomb check is replaced by this one: PIL warns below twice its
    limit without naming the file, and its error names no setting to change.
    """
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # the header is read here; the size is checked below
    try:
        im = Image.open(path)
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    with im:
        width, height = im.size
        if width * height > max_pixels:
            raise ValueError(f"{width} x {height} = {width * height:,} pixels, more than "
                             f"max_image_pixels = {max_pixels:,}; " + _PIXELS_HINT)
        if shortest_side and min(width, height) > 0:
            scale = shortest_side / min(width, height)
            resized = round(width * scale) * round(height * scale)
            if resized > max_pixels:
                raise ValueError(f"{width} x {height} pixels: resized to a shortest side of "
                                 f"{shortest_side} for the encoder it has {resized:,} pixels, more "
                                 f"than max_image_pixels = {max_pixels:,}; " + _PIXELS_HINT)
        return to_rgb(im)


class _ImageDataset(Dataset):
    """Images of the given rows. Errors are returned, not raised, so the main process
    can report them cleanly (an exception in a worker arrives wrapped in a traceback)."""

    def __init__(self, paths, rows, preprocess, shape, max_pixels: int, shortest_side: int | None):
        self.paths = paths
        self.rows = list(rows)
        self.preprocess = preprocess
        self.shape = tuple(shape)
        self.max_pixels = max_pixels
        self.shortest_side = shortest_side

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        row = self.rows[i]
        try:
            x = self.preprocess(open_image(self.paths[row], self.max_pixels, self.shortest_side))
            return row, x, ""
        except Exception as e:  # PIL raises assorted types for bad files
            return row, torch.zeros(self.shape), f"{type(e).__name__}: {e}"


# --------------------------------------------------------------------------- output


def _partial_path(out_h5: Path) -> Path:
    return out_h5.with_name(out_h5.name + ".partial")


def _open_partial(partial: Path, key: str, n: int, d: int, c: int, attrs: dict, log):
    """Open a matching .partial for resuming, or create a fresh one."""
    if partial.exists():
        f = None
        try:
            f = h5py.File(partial, "r+")
            ok = (
                f.attrs.get("resume_key") == key
                and f["image"].shape == (n, d)
                and f["text"].shape == (n, d)
                and f["label_text"].shape == (c, d)
                and f["image_skipped"].shape == (n,)
                and 0 <= int(f.attrs["n_done_image"]) <= n
                and 0 <= int(f.attrs["n_done_text"]) <= n
            )
        except Exception:  # unreadable (killed mid-write) counts as stale
            ok = False
        if ok:
            done_i, done_t = int(f.attrs["n_done_image"]), int(f.attrs["n_done_text"])
            log(f"resuming {partial}: {done_i}/{n} image rows, {done_t}/{n} text rows done")
            return f, done_i, done_t
        if f is not None:
            f.close()
        log(f"discarding {partial}: made with other inputs or settings, or unreadable")
        partial.unlink()

    f = h5py.File(partial, "w")
    try:
        chunks = (min(n, CHUNK_ROWS), d)
        f.create_dataset("image", shape=(n, d), dtype=np.float16, chunks=chunks)
        f.create_dataset("text", shape=(n, d), dtype=np.float16, chunks=chunks)
        f.create_dataset("label_text", shape=(c, d), dtype=np.float16)
        f.create_dataset("image_skipped", shape=(n,), dtype=np.uint8)
        for k, v in attrs.items():
            f.attrs[k] = v
        f.attrs["resume_key"] = key
        f.attrs["n_done_image"] = 0
        f.attrs["n_done_text"] = 0
        f.flush()
    except BaseException:
        f.close()
        partial.unlink(missing_ok=True)
        raise
    return f, 0, 0


@contextlib.contextmanager
def _sigterm_raises():
    """Turn SIGTERM (how Snakemake and schedulers stop jobs) into SystemExit, so the
    .partial is closed cleanly between HDF5 calls and can be resumed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _to_f16(y: torch.Tensor, what: str, lo: int, ids=None) -> np.ndarray:
    out = y.float().cpu().numpy().astype(np.float16)
    check_finite(out, f"the {what} embeddings", rows=range(lo, lo + len(out)), ids=ids,
                 hint="the encoder's output is not finite or overflows float16; nothing was "
                      "written")
    return out


# --------------------------------------------------------------------------- main


def extract_features(
    pairs_h5,
    out_h5,
    model_name: str,
    pretrained=None,
    batch_size: int = 256,
    num_workers: int = 2,
    device="cpu",
    progress: bool = True,
    *,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
    unreadable_images: str = "error",
    row_names=None,
) -> Path:
    """Encode the images, texts and label names of ``pairs_h5`` into ``out_h5``.

    Embeddings are stored raw (not L2-normalised) as float16. Image paths are opened as
    written in ``pairs.h5`` (relative to the current directory). On CUDA the encoders run
    under fp16 autocast. Progress bars go to stderr.

    An image that cannot be read, or has more than ``max_image_pixels`` pixels, stops the
    run with ``unreadable_images="error"``; with ``"skip"`` its row is marked in
    ``image_skipped``, its image embedding is zero, and the log lists it. Messages name an
    image's row as ``row_names[row]`` where given (what the pairs file was made from, e.g.
    "manifest.tsv:12, id 'x'"), else by its row and id in ``pairs_h5``.

    Resumes from ``{out_h5}.partial`` when it was made from the same inputs (contents of
    ``pairs.h5``, image file sizes and mtimes) and settings (model, weights, batch size,
    device type, library versions); otherwise starts over. On bad input a
    ``FeatureInputError`` (a ``ValueError``) names the file, and the .partial is removed;
    on other interruptions the .partial is kept for resuming. Returns ``out_h5``.
    """
    import open_clip

    pairs_h5, out_h5 = Path(pairs_h5), Path(out_h5)
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if unreadable_images not in UNREADABLE_POLICIES:
        raise ValueError(f"unreadable_images must be one of {UNREADABLE_POLICIES}, "
                         f"got {unreadable_images!r}")
    if int(max_image_pixels) < 1:
        raise ValueError(f"max_image_pixels must be >= 1, got {max_image_pixels}")
    batch_size = int(batch_size)
    dev = torch.device(device)
    tag = normalise_pretrained(pretrained)

    data = _read_pairs(pairs_h5)
    paths, texts, ids = data["image_paths"], data["texts"], data["ids"]
    label_names = data["label_names"]
    n, c = len(paths), len(label_names)

    def log(msg):
        if progress:
            tqdm.write(f"[features {data['dataset'] or pairs_h5}] {msg}", file=sys.stderr)

    def where(row: int) -> str:
        return row_names[row] if row_names is not None else f"{_row_name(row, ids)} of {str(pairs_h5)!r}"

    _check_image_files(paths, ids, pairs_h5)

    model, preprocess, tokenizer = load_clip(model_name, tag, dev)
    amp = dev.type == "cuda"
    pp = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = pp.get("size", getattr(model.visual, "image_size", None))
    size = (size, size) if isinstance(size, int) else tuple(size)
    prompts = [LABEL_PROMPT.format(label=name) for name in label_names]

    def encode_text(strings):
        tokens = tokenizer(strings).to(dev)
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            return model.encode_text(tokens)

    with torch.inference_mode(), _sigterm_raises():
        # Label prompts first: cheap, and they give the embedding size.
        label_emb = encode_text(prompts if c else [""])
        d = int(label_emb.shape[1])
        label_f16 = _to_f16(label_emb, "label_text", 0)[:c]

        attrs = {
            "dataset": data["dataset"],
            "model": str(model_name),
            "pretrained": "from-model-name" if model_name.startswith(_SCHEMAS) else tag,
            "random_weights": tag == "none" and not model_name.startswith(_SCHEMAS),
            "open_clip_version": str(open_clip.__version__),
            "image_size": np.asarray(size, dtype=np.int64),
            "image_mean": np.asarray(pp.get("mean", ()), dtype=np.float64),
            "image_std": np.asarray(pp.get("std", ()), dtype=np.float64),
            "preprocess": repr(preprocess),
            "embed_dim": d,
            "n": n,
            "label_prompt": LABEL_PROMPT,
            "normalized": False,
            "torch_version": str(torch.__version__),
            "device": dev.type,
            "precision": "amp-fp16" if amp else "fp32",
            "batch_size": batch_size,
            "source_sha256": strings_digest(paths, texts, label_names),
            # the image files as they were read: path, size and modification time of each
            "images_sha256": files_digest(paths),
            "max_image_pixels": int(max_image_pixels),
            "unreadable_images": unreadable_images,
        }
        weights_id = tag
        if tag != "none" and os.path.isfile(tag):
            st = os.stat(tag)
            weights_id = f"{os.path.abspath(tag)}:{st.st_size}:{st.st_mtime_ns}"
        key = json.dumps(
            {
                "attrs": {k: v for k, v in attrs.items() if isinstance(v, (str, int, bool))},
                "weights": weights_id,
            },
            sort_keys=True,
        )

        out_h5.parent.mkdir(parents=True, exist_ok=True)
        partial = _partial_path(out_h5)
        f, done_i, done_t = _open_partial(partial, key, n, d, c, attrs, log)
        # Start the DataLoader workers while the file is closed: forked workers would
        # inherit its descriptor and HDF5 lock, and after a SIGKILL of this process the
        # orphaned workers would keep the .partial locked for a rerun.
        f.close()
        batches = _image_batches(paths, done_i, preprocess, size, batch_size, num_workers, dev,
                                 int(max_image_pixels), pp.get("resize_mode", "shortest"))
        try:
            with h5py.File(partial, "r+") as f:
                f["label_text"][...] = label_f16
                _encode_images(
                    f, batches, model, data, where, done_i, dev, amp, progress,
                    model_name, unreadable_images, log,
                )
                with tqdm(
                    total=n, initial=done_t, desc=f"text features ({model_name})",
                    unit="text", file=sys.stderr, disable=not progress, dynamic_ncols=True,
                ) as bar:
                    for lo in range(done_t, n, batch_size):
                        hi = min(lo + batch_size, n)
                        f["text"][lo:hi] = _to_f16(encode_text(texts[lo:hi]), "text", lo, ids)
                        f.attrs["n_done_text"] = hi
                        f.flush()
                        bar.update(hi - lo)
                skipped = np.flatnonzero(f["image_skipped"][:])
                if skipped.size == n:
                    raise FeatureInputError(f"none of the {n} images listed in "
                                            f"{str(pairs_h5)!r} could be read")
                for k in _RESUME_ATTRS:
                    del f.attrs[k]
        except FeatureInputError:
            partial.unlink(missing_ok=True)
            raise
        finally:
            del batches  # shuts down the DataLoader workers
        os.replace(partial, out_h5)
    if skipped.size:
        log(f"{skipped.size} of {n} images could not be read and were skipped "
            "(unreadable_images: skip); their pairs are left out of training and evaluation: "
            + ", ".join(f"{paths[r]!r} ({where(r)})" for r in skipped))
    log(f"wrote {out_h5} ({n} rows, {c} labels, d={d})")
    return out_h5


def _image_batches(paths, start, preprocess, size, batch_size, num_workers, dev, max_pixels,
                   resize_mode):
    """Iterator over (rows, images, errors) batches of rows start..n-1; workers start now."""
    n = len(paths)
    if start >= n:
        return iter(())
    # open_clip's "shortest" mode resizes the shortest side to the crop size, then crops;
    # its other modes resize to at most the crop size
    shortest_side = min(size) if resize_mode == "shortest" else None
    loader = DataLoader(
        _ImageDataset(paths, range(start, n), preprocess, (3, *size), max_pixels, shortest_side),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=dev.type == "cuda",
    )
    return iter(loader)


def _encode_images(f, batches, model, data, where, start, dev, amp, progress,
                   model_name, unreadable_images, log):
    paths = data["image_paths"]
    n = len(paths)
    if start >= n:
        return
    with tqdm(
        total=n, initial=start, desc=f"image features ({model_name})", unit="img",
        file=sys.stderr, disable=not progress, dynamic_ncols=True,
    ) as bar:
        for rows, x, errors in batches:
            bad = [i for i, e in enumerate(errors) if e]
            for i in bad:
                r = int(rows[i])
                image = f"image {paths[r]!r} ({where(r)})"
                if unreadable_images == "error":
                    raise FeatureInputError(f"cannot read {image}: {errors[i]}. {_SKIP_HINT}")
                log(f"skipping {image}: {errors[i]}")
            lo, hi = int(rows[0]), int(rows[-1]) + 1
            with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                y = model.encode_image(x.to(dev, non_blocking=True))
            skipped = np.zeros(hi - lo, np.uint8)
            skipped[bad] = 1
            y[torch.from_numpy(skipped).bool().to(y.device)] = 0  # a skipped image has no embedding
            f["image"][lo:hi] = _to_f16(y, "image", lo, data["ids"])
            f["image_skipped"][lo:hi] = skipped
            f.attrs["n_done_image"] = hi
            f.flush()
            bar.update(hi - lo)
