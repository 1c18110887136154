"""Tests for egath.features (CLIP feature extraction) with the tiny random-weight model."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import open_clip
import pytest
import torch
from PIL import Image, ImageDraw

import h5files
from egath import features as F
from egath.io import files_digest
from egath.naming import encoder_slug

MODEL = "egath-tiny-vit"
N = 40
COLOURS = [
    (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255),
    (255, 0, 255), (255, 255, 255), (0, 0, 0), (128, 64, 0), (64, 128, 255),
]
WORDS = ["sky", "red", "blue", "tree", "water", "cloud", "sun", "dog"]
LABELS = ["sky", "tree", "water", "animal"]


def write_pairs(path, image_paths, texts, labels, label_names, n_query=4, n_train=8, seed=0):
    """Write a pairs.h5 in the format of docs/formats.md."""
    vocab = sorted({w for t in texts for w in t.split()})
    bow = np.array([[w in t.split() for w in vocab] for t in texts], dtype=np.uint8)
    query, train = h5files.permutation_split(len(image_paths), n_query, n_train, seed)
    h5files.write_pairs(path, labels, query, train, bow=bow, texts=list(texts), image_paths=image_paths,
                        label_names=list(label_names), vocabulary=vocab, split_seed=seed)


def make_dataset(root: Path, n=N):
    """n PNG images (plain colours, with a shape on some) and their pairs.h5."""
    img_dir = root / "images"
    img_dir.mkdir(parents=True)
    paths, texts, labels = [], [], []
    rng = np.random.default_rng(1)
    for i in range(n):
        im = Image.new("RGB", (64 + 8 * (i % 3), 64), COLOURS[i % len(COLOURS)])
        if i % 2:
            ImageDraw.Draw(im).ellipse((10, 10, 40, 40), fill=COLOURS[(i + 3) % len(COLOURS)])
        p = img_dir / f"img{i:03d}.png"
        im.save(p)
        paths.append(p)
        texts.append(" ".join(rng.choice(WORDS, size=1 + i % 5)))
        labels.append([(i + k) % 3 == 0 for k in range(len(LABELS))])
    pairs = root / "pairs.h5"
    write_pairs(pairs, paths, texts, labels, LABELS)
    return pairs, paths


def read_features(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in ("image", "text", "label_text")}, dict(f.attrs)


def assert_same(a, b):
    for k in ("image", "text", "label_text"):
        assert a[k].dtype == b[k].dtype == np.float16
        assert np.array_equal(a[k].view(np.uint16), b[k].view(np.uint16)), k


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    pairs, paths = make_dataset(root)
    ref = root / "ref.h5"
    F.extract_features(pairs, ref, MODEL, "none", batch_size=8, num_workers=0, progress=False)
    return pairs, paths, ref


class CallCounter:
    """Wraps a CLIP method: counts calls and optionally raises on call number `fail_at`."""

    def __init__(self, monkeypatch, name, fail_at=None, exc=KeyboardInterrupt):
        self.calls, self.fail_at, self.exc = 0, fail_at, exc
        orig = getattr(open_clip.model.CLIP, name)

        def wrapper(model, *a, **k):
            self.calls += 1
            if self.fail_at is not None and self.calls == self.fail_at:
                raise self.exc("simulated interruption")
            return orig(model, *a, **k)

        monkeypatch.setattr(open_clip.model.CLIP, name, wrapper)


# --------------------------------------------------------------------------- model


def test_tiny_model_config_builds():
    assert MODEL in F.register_model_configs()
    F.register_model_configs()  # idempotent
    assert open_clip.list_models().count(MODEL) == 1
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL, pretrained=None)
    assert model.visual.image_size == (64, 64)
    tok = open_clip.get_tokenizer(MODEL)
    tokens = tok(["word " * 100, "a"])
    assert tokens.shape == (2, 32) == (2, model.context_length)
    with torch.no_grad():
        assert model.encode_text(tokens).shape == (2, 64)
        x = preprocess(Image.new("RGB", (80, 50), "red")).unsqueeze(0)
        assert model.encode_image(x).shape == (1, 64)


def test_load_clip_random_weights_are_seeded_and_leave_rng_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    m1, _, _ = F.load_clip(MODEL, None)
    m2, _, tok = F.load_clip(MODEL, "none")
    assert torch.equal(torch.get_rng_state(), state)
    assert not m1.training
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    assert tok(["x"]).shape == (1, 32)


def test_load_clip_local_checkpoint(tmp_path):
    model, _, _ = F.load_clip(MODEL, None)
    with torch.no_grad():
        model.logit_scale.fill_(1.234)
    ckpt = tmp_path / "my-weights.pt"
    torch.save(model.state_dict(), ckpt)
    loaded, _, _ = F.load_clip(MODEL, str(ckpt))
    assert loaded.logit_scale.item() == pytest.approx(1.234)
    assert encoder_slug(MODEL, str(ckpt)) == "egath-tiny-vit_my-weights"
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        F.load_clip(MODEL, str(tmp_path / "missing.pt"))


def test_unknown_model_name():
    with pytest.raises(ValueError) as e:
        F.load_clip("ViT-Q-99", "none")
    msg = str(e.value)
    assert "ViT-Q-99" in msg and "ViT-B-32" in msg


def test_unknown_pretrained_tag():
    with pytest.raises(ValueError, match="no-such-tag.*ViT-B-32"):
        F.load_clip("ViT-B-32", "no-such-tag")


def test_offline_download_error(monkeypatch):
    def offline(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", offline)
    with pytest.raises(RuntimeError) as e:
        F.load_clip("ViT-B-32", "openai")
    msg = str(e.value)
    assert "ViT-B-32" in msg and "openai" in msg
    assert "offline" in msg and "pretrained" in msg and "path" in msg


def test_encoder_slug():
    assert encoder_slug("ViT-B-32", "openai") == "ViT-B-32_openai"
    assert encoder_slug(MODEL, None) == "egath-tiny-vit_none"
    assert encoder_slug(MODEL, "none") == "egath-tiny-vit_none"
    assert encoder_slug("ViT-B-32", "/w/clip/vit_b32.safetensors") == "ViT-B-32_vit_b32"
    assert "/" not in encoder_slug("hf-hub:org/repo", None)


# --------------------------------------------------------------------------- extraction


def test_output_format(data, tmp_path):
    pairs, paths, ref = data
    out = tmp_path / "features" / "tiny.h5"
    # num_workers=2: the DataLoader worker path; must match the in-process reference.
    F.extract_features(pairs, out, MODEL, None, batch_size=16, num_workers=2, progress=True)
    assert out.exists() and not Path(str(out) + ".partial").exists()
    with h5py.File(out, "r") as f:
        assert f["image"].shape == (N, 64) and f["text"].shape == (N, 64)
        assert f["label_text"].shape == (len(LABELS), 64)
        for k in ("image", "text", "label_text"):
            assert f[k].dtype == np.float16
        assert f["image"].chunks == (N, 64) and f["text"].chunks == (N, 64)
        a = dict(f.attrs)
    assert a["model"] == MODEL and a["pretrained"] == "none"
    assert bool(a["random_weights"]) is True
    assert a["open_clip_version"] == open_clip.__version__
    assert list(a["image_size"]) == [64, 64]
    assert np.allclose(a["image_mean"], open_clip.OPENAI_DATASET_MEAN)
    assert np.allclose(a["image_std"], open_clip.OPENAI_DATASET_STD)
    assert "Normalize" in a["preprocess"]
    assert a["embed_dim"] == 64 and a["n"] == N
    assert not any(k in a for k in ("n_done_image", "n_done_text", "resume_key"))
    feats, _ = read_features(out)
    ref_feats, _ = read_features(ref)
    assert_same(feats, ref_feats)  # batch 16 vs 8, workers vs none: same rows


def test_features_deterministic_and_informative(data, tmp_path):
    pairs, paths, ref = data
    out = tmp_path / "again.h5"
    F.extract_features(pairs, out, MODEL, "none", batch_size=8, num_workers=0, progress=False)
    feats, attrs = read_features(out)
    ref_feats, ref_attrs = read_features(ref)
    assert_same(feats, ref_feats)
    assert attrs["source_sha256"] == ref_attrs["source_sha256"]
    img = feats["image"].astype(np.float32)
    assert np.isfinite(img).all() and np.abs(img).max() > 0
    # Rows 0 (red) and 2 (blue) are plain images of distinct colours; 0 and 10 are both red.
    assert np.abs(img[0] - img[2]).max() > 1e-2
    assert np.array_equal(img[0], img[10])
    assert len({row.tobytes() for row in feats["text"]}) > 1
    assert len({row.tobytes() for row in feats["label_text"]}) == len(LABELS)
    # Raw embeddings, not unit length.
    assert not np.allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-2)
    # label_text is the text embedding of the prompt.
    model, _, tok = F.load_clip(MODEL, "none")
    with torch.inference_mode():
        want = model.encode_text(tok([f"a photo of a {LABELS[1]}."])).numpy()
    assert np.allclose(feats["label_text"][1].astype(np.float32), want[0], rtol=1e-2, atol=1e-3)


def test_resume_after_interruptions(data, tmp_path, monkeypatch):
    pairs, paths, ref = data
    out = tmp_path / "resumed.h5"
    partial = Path(str(out) + ".partial")
    kw = dict(batch_size=8, num_workers=0, progress=False)  # 5 batches of images and texts

    # 1: interrupted during the third image batch.
    with monkeypatch.context() as m:
        CallCounter(m, "encode_image", fail_at=3)
        with pytest.raises(KeyboardInterrupt):
            F.extract_features(pairs, out, MODEL, "none", **kw)
    assert not out.exists() and partial.exists()
    with h5py.File(partial, "r") as f:
        assert f.attrs["n_done_image"] == 16 and f.attrs["n_done_text"] == 0

    # 2: resumes at row 16 (3 image batches), then interrupted in the second text batch
    # (encode_text call 1 encodes the label prompts).
    with monkeypatch.context() as m:
        img = CallCounter(m, "encode_image")
        txt = CallCounter(m, "encode_text", fail_at=3, exc=RuntimeError)
        with pytest.raises(RuntimeError, match="simulated"):
            F.extract_features(pairs, out, MODEL, "none", **kw)
        assert img.calls == 3
    with h5py.File(partial, "r") as f:
        assert f.attrs["n_done_image"] == N and f.attrs["n_done_text"] == 8

    # 3: finishes the remaining 4 text batches without touching the images.
    with monkeypatch.context() as m:
        img = CallCounter(m, "encode_image")
        txt = CallCounter(m, "encode_text")
        F.extract_features(pairs, out, MODEL, "none", **kw)
        assert img.calls == 0 and txt.calls == 1 + 4
    assert out.exists() and not partial.exists()
    assert_same(read_features(out)[0], read_features(ref)[0])


def test_changed_settings_start_over(data, tmp_path, monkeypatch):
    pairs, paths, ref = data
    out = tmp_path / "restart.h5"
    with monkeypatch.context() as m:
        CallCounter(m, "encode_image", fail_at=3)
        with pytest.raises(KeyboardInterrupt):
            F.extract_features(pairs, out, MODEL, "none", batch_size=8, num_workers=0,
                               progress=False)
    with monkeypatch.context() as m:
        img = CallCounter(m, "encode_image")
        F.extract_features(pairs, out, MODEL, "none", batch_size=10, num_workers=0,
                           progress=False)
        assert img.calls == 4  # all 40 rows again, in batches of 10
    with h5py.File(out, "r") as f:
        assert f.attrs["batch_size"] == 10


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["TERM", "KILL"])
def test_resume_after_kill(data, tmp_path, sig):
    """A separate process (with DataLoader workers) is killed mid-run; the rerun resumes."""
    pairs, paths, ref = data
    out = tmp_path / "killed.h5"
    partial = Path(str(out) + ".partial")
    marker = tmp_path / "third-batch-started"
    script = textwrap.dedent(f"""
        import time, open_clip
        from egath import features as F
        orig, calls = open_clip.model.CLIP.encode_image, []
        def slow(model, x):
            calls.append(1)
            if len(calls) == 3:
                open({str(marker)!r}, "w").close()
                time.sleep(60)
            return orig(model, x)
        open_clip.model.CLIP.encode_image = slow
        F.extract_features({str(pairs)!r}, {str(out)!r}, {MODEL!r}, "none",
                           batch_size=8, num_workers=2, progress=False)
    """)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(Path(F.__file__).parents[1]))
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, "extraction process ended early"
            assert time.monotonic() < deadline, "extraction process too slow"
            time.sleep(0.05)
        proc.send_signal(sig)
        assert proc.wait(timeout=30) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not out.exists()
    with h5py.File(partial, "r") as f:
        assert f.attrs["n_done_image"] == 16
    F.extract_features(pairs, out, MODEL, "none", batch_size=8, num_workers=0, progress=False)
    assert_same(read_features(out)[0], read_features(ref)[0])


# --------------------------------------------------------------------------- bad input


def test_missing_image(tmp_path):
    pairs, paths = make_dataset(tmp_path, n=12)
    paths[7].unlink()
    out = tmp_path / "out.h5"
    with pytest.raises(F.FeatureInputError) as e:
        F.extract_features(pairs, out, MODEL, "none", batch_size=4, num_workers=0,
                           progress=False)
    msg = str(e.value)
    assert str(paths[7]) in msg and "row 7" in msg and "s0007" in msg
    assert not out.exists() and not Path(str(out) + ".partial").exists()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupt_image(tmp_path, num_workers):
    pairs, paths = make_dataset(tmp_path, n=12)
    paths[9].write_bytes(paths[9].read_bytes()[:60])  # truncated PNG
    out = tmp_path / "out.h5"
    with pytest.raises(F.FeatureInputError) as e:
        F.extract_features(pairs, out, MODEL, "none", batch_size=4, num_workers=num_workers,
                           progress=False)
    msg = str(e.value)
    assert str(paths[9]) in msg and "row 9" in msg
    assert not out.exists() and not Path(str(out) + ".partial").exists()


@pytest.mark.parametrize("damage", ["truncate", "not-hdf5"])
def test_bad_pairs_file(tmp_path, damage):
    pairs, _ = make_dataset(tmp_path, n=6)
    raw = pairs.read_bytes()
    pairs.write_bytes(raw[: len(raw) // 2] if damage == "truncate" else b"id\timage\n")
    out = tmp_path / "out.h5"
    with pytest.raises(F.FeatureInputError, match=str(pairs)):
        F.extract_features(pairs, out, MODEL, "none", num_workers=0, progress=False)
    assert not out.exists() and not Path(str(out) + ".partial").exists()


def test_pairs_file_missing_datasets(tmp_path):
    pairs = tmp_path / "pairs.h5"
    with h5py.File(pairs, "w") as f:
        f["ids"] = np.array(["a"], dtype=h5py.string_dtype())
    with pytest.raises(F.FeatureInputError, match="image_paths"):
        F.extract_features(pairs, tmp_path / "o.h5", MODEL, "none", progress=False)


# --------------------------------------------------------------------------- odd images


def one_image_pairs(root: Path, images: list) -> tuple[Path, list[Path]]:
    """pairs.h5 listing the given PIL images, saved as PNG under root."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, im in enumerate(images):
        paths.append(root / f"odd{i}.png")
        im.save(paths[-1])
    pairs = root / "pairs.h5"
    n = len(paths)
    write_pairs(pairs, paths, ["sky"] * n, [[1, 0, 0, 0]] * n, LABELS, n_query=1, n_train=1)
    return pairs, paths


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    """A 16-bit grey PNG reads as its 8-bit equivalent; convert("RGB") alone turns it white."""
    grey16 = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    grey8 = np.rint(grey16 / 257).astype(np.uint8)
    images = [Image.fromarray(grey16), Image.fromarray(grey8), Image.new("L", (64, 64), 255)]
    pairs, paths = one_image_pairs(tmp_path, images)
    assert Image.open(paths[0]).mode == "I;16"
    assert np.array_equal(np.asarray(F.open_image(paths[0]))[..., 0], grey8)
    out = tmp_path / "f.h5"
    F.extract_features(pairs, out, MODEL, "none", batch_size=4, num_workers=0, progress=False)
    image = read_features(out)[0]["image"]
    assert np.array_equal(image[0], image[1])  # 16-bit == its 8-bit copy
    assert not np.array_equal(image[0], image[2])  # and not white


@pytest.mark.parametrize("mode, values, expected", [
    ("I", [0, 300, 65535], [0, 1, 255]),  # 16-bit grey stored as 32-bit (PGM, TIFF)
    ("I", [0, 100, 255], [0, 100, 255]),  # 8-bit values in a 32-bit image
    ("F", [0.0, 0.5, 1.0], [0, 128, 255]),
])
def test_wide_grey_modes_are_scaled(mode, values, expected):
    im = Image.fromarray(np.array([values], np.float32 if mode == "F" else np.int32), mode)
    assert np.asarray(F.to_rgb(im))[0, :, 0].tolist() == expected


def test_out_of_range_grey_is_refused_not_guessed():
    im = Image.fromarray(np.array([[0, 70000]], np.int32), "I")
    with pytest.raises(ValueError, match="8 or 16 bits"):
        F.to_rgb(im)


def test_every_missing_image_is_counted_and_ten_named(tmp_path):
    pairs, paths = make_dataset(tmp_path, n=14)
    for p in paths[1:13]:
        p.unlink()
    with pytest.raises(F.FeatureInputError) as e:
        F.extract_features(pairs, tmp_path / "o.h5", MODEL, "none", num_workers=0, progress=False)
    msg = str(e.value)
    assert "12 image path(s)" in msg and "and 2 more" in msg
    assert all(str(p) in msg for p in paths[1:11]) and str(paths[11]) not in msg


def test_a_directory_is_named_as_such(tmp_path):
    pairs, paths = make_dataset(tmp_path, n=6)
    paths[2].unlink()
    paths[2].mkdir()
    with pytest.raises(F.FeatureInputError, match=f"{re.escape(str(paths[2]))}' is a directory"):
        F.extract_features(pairs, tmp_path / "o.h5", MODEL, "none", num_workers=0, progress=False)


def test_huge_image_names_the_setting_and_skip_lists_it(tmp_path, capsys):
    images = [Image.new("RGB", (64, 64), c) for c in COLOURS[:3]]
    images[1] = Image.new("RGB", (200, 100), "red")  # 20,000 pixels
    pairs, paths = one_image_pairs(tmp_path, images)
    out = tmp_path / "f.h5"
    kw = dict(batch_size=2, num_workers=0, max_image_pixels=10_000)
    with pytest.raises(F.FeatureInputError) as e:
        F.extract_features(pairs, out, MODEL, "none", progress=False, **kw)
    msg = str(e.value)
    assert str(paths[1]) in msg and "row 1" in msg and "20,000 pixels" in msg
    assert "clip.max_image_pixels" in msg and "clip.unreadable_images" in msg
    assert not out.exists() and not Path(str(out) + ".partial").exists()

    F.extract_features(pairs, out, MODEL, "none", progress=True, unreadable_images="skip", **kw)
    log = capsys.readouterr().err
    assert f"skipping image {str(paths[1])!r}" in log and "1 of 3 images could not be read" in log
    with h5py.File(out) as f:
        assert f["image_skipped"][:].tolist() == [0, 1, 0]
        assert not f["image"][1].any() and f["image"][0].any()
        assert f.attrs["unreadable_images"] == "skip"


def test_pil_limit_is_replaced_by_ours(tmp_path, monkeypatch):
    """Below max_image_pixels no PIL DecompressionBombWarning (which names no file) is raised."""
    pairs, _ = one_image_pairs(tmp_path, [Image.new("RGB", (64, 64), "red")])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # PIL warns from 3,000 pixels, errs from 6,000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        F.extract_features(pairs, tmp_path / "f.h5", MODEL, "none", num_workers=0, progress=False)
    assert Image.MAX_IMAGE_PIXELS == 3000


def test_all_images_unreadable_is_an_error_even_when_skipping(tmp_path):
    pairs, paths = make_dataset(tmp_path, n=3)
    for p in paths:
        p.write_bytes(b"not an image")
    with pytest.raises(F.FeatureInputError, match="none of the 3 images"):
        F.extract_features(pairs, tmp_path / "o.h5", MODEL, "none", num_workers=0, progress=False,
                           unreadable_images="skip")
    assert not (tmp_path / "o.h5").exists()


def test_recorded_image_digest_changes_when_an_image_is_replaced(tmp_path):
    pairs, paths = make_dataset(tmp_path, n=3)
    out = tmp_path / "f.h5"
    F.extract_features(pairs, out, MODEL, "none", num_workers=0, progress=False)
    with h5py.File(out) as f:
        recorded = f.attrs["images_sha256"]
    assert files_digest([str(p) for p in paths]) == recorded
    copy = tmp_path / "copy.png"
    copy.write_bytes(paths[1].read_bytes())
    os.replace(copy, paths[1])  # the same bytes, a new file in place
    assert files_digest([str(p) for p in paths]) != recorded


def test_non_finite_embeddings_name_their_rows(data, tmp_path, monkeypatch):
    pairs, paths, ref = data
    real = open_clip.model.CLIP.encode_image

    def nan_in_row_5(model, x, *a, **k):
        y = real(model, x, *a, **k)
        y[5] = float("nan")  # one batch of all N rows
        return y

    monkeypatch.setattr(open_clip.model.CLIP, "encode_image", nan_in_row_5)
    out = tmp_path / "f.h5"
    with pytest.raises(ValueError, match=r"image embeddings holds NaN or inf in 1 row\(s\): 5 \(id 's0005'\)"):
        F.extract_features(pairs, out, MODEL, "none", batch_size=N, num_workers=0, progress=False)
    assert not out.exists()


def test_an_extreme_aspect_ratio_is_refused_before_resizing_blows_it_up(tmp_path):
    """2,000 x 1 has few pixels; resized to the encoder's shortest side of 64 it has 8 million."""
    images = [Image.new("RGB", (100, 64), "red"), Image.new("RGB", (2000, 1), "blue")]
    pairs, paths = one_image_pairs(tmp_path, images)
    with pytest.raises(F.FeatureInputError) as e:
        F.extract_features(pairs, tmp_path / "f.h5", MODEL, "none", num_workers=0, progress=False,
                           max_image_pixels=10_000)
    msg = str(e.value)
    assert str(paths[1]) in msg and "shortest side of 64" in msg and "8,192,000 pixels" in msg
    assert "clip.max_image_pixels" in msg


def test_a_fifo_or_a_link_loop_is_refused_not_waited_on(tmp_path):
    """PIL's open of a named pipe waits for a writer forever; a link loop is no file either."""
    pairs, paths = make_dataset(tmp_path, n=4)
    paths[1].unlink()
    os.mkfifo(paths[1])
    paths[2].unlink()
    paths[2].symlink_to(paths[2])
    with pytest.raises(F.FeatureInputError) as e:
        F.extract_features(pairs, tmp_path / "o.h5", MODEL, "none", num_workers=0, progress=False)
    msg = str(e.value)
    assert f"{str(paths[1])!r} is a directory or other non-file" in msg
    assert f"{str(paths[2])!r} cannot be looked up: Too many levels of symbolic links" in msg
