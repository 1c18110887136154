"""The real-dataset branch of the workflow on miniatures whose archives, or their unpacked
files, are already in place: download_dataset must use them (no network) and unpack the
archives, and prepare_dataset, build_pairs (and for MIRFlickr25K the later stages) run on
the result; the dataset options allow_missing_images and allow_empty_text reach their rules."""
from __future__ import annotations

import csv
import io
import zipfile

import h5py
import numpy as np
import pytest
from PIL import Image

from egath.datasets.mirflickr import MIRFLICKR_LABELS
from egath.datasets.text import EMPTY_TEXT_PLACEHOLDER
from test_download import closed_port_url
from test_nuswide import (N_TAGS, TAGS, expected, photo_copy_name, placeholder_bytes, sample_id,
                          write_imagelist_layout, write_official_files, write_photo_id_copy)
from test_real_datasets import _coco_raw
from test_workflow import TINY_CONFIG, snakemake, write_config

pytestmark = pytest.mark.workflow

N_IMAGES = 40
FREQUENT_TAGS = ["sky", "tree", "water", "night", "city"]


def jpeg_bytes(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (seed * 37 % 256, seed * 11 % 256, 90)).save(buffer, "JPEG")
    return buffer.getvalue()


def labels_of(i: int) -> list[str]:
    return [] if i % 10 == 0 else [MIRFLICKR_LABELS[i % 24], MIRFLICKR_LABELS[(i * 5) % 24]]


def tags_of(i: int) -> list[str]:
    return [FREQUENT_TAGS[i % 5], FREQUENT_TAGS[(i * 3) % 5], f"rare{i}"]


def write_archives(raw) -> None:
    """The two official archives, in their real layout."""
    raw.mkdir(parents=True)
    with zipfile.ZipFile(raw / "mirflickr25k.zip", "w") as zf:
        for i in range(1, N_IMAGES + 1):
            zf.writestr(f"mirflickr/im{i}.jpg", jpeg_bytes(i))
            zf.writestr(f"mirflickr/meta/tags/tags{i}.txt", "".join(t + "\r\n" for t in tags_of(i)))
        zf.writestr("mirflickr/doc/common_tags.txt", "".join(f"{t} 25\n" for t in FREQUENT_TAGS))
    with zipfile.ZipFile(raw / "mirflickr25k_annotations_v080.zip", "w") as zf:
        for name in MIRFLICKR_LABELS:
            ids = [i for i in range(1, N_IMAGES + 1) if name in labels_of(i)]
            zf.writestr(f"mirflickr25k_annotations_v080/{name}.txt", "".join(f"{i}\n" for i in ids))
            zf.writestr(f"mirflickr25k_annotations_v080/{name}_r1.txt", "")
        zf.writestr("mirflickr25k_annotations_v080/README.txt", "annotations v080\n")


def test_mirflickr_archives_in_place_run_through_every_stage(tmp_path):
    write_archives(tmp_path / "resources/mirflickr25k/raw")
    config = {**TINY_CONFIG, "bits": [8], "datasets": {"mirflickr25k": {
        "source": "mirflickr25k", "n_query": 6, "n_train": 20, "split_seed": 6, "bow_dim": 5}}}
    result = snakemake(tmp_path, "--cores", "2", config=write_config(tmp_path / "mir.yaml", config))
    assert "download_dataset" in result.stdout + result.stderr

    kept = [i for i in range(1, N_IMAGES + 1) if labels_of(i)]  # every image has a frequent tag
    with h5py.File(tmp_path / "results/mirflickr25k/pairs.h5") as pairs:
        assert [s.decode() for s in pairs["label_names"][:]] == list(MIRFLICKR_LABELS)
        assert pairs["labels"].shape == (len(kept), 24)
        expected = np.zeros((len(kept), 24), np.uint8)
        for row, i in enumerate(kept):
            expected[row, [MIRFLICKR_LABELS.index(n) for n in labels_of(i)]] = 1
        np.testing.assert_array_equal(pairs["labels"][:], expected)
        assert sorted(v.decode() for v in pairs["vocabulary"][:]) == sorted(FREQUENT_TAGS)
        assert len(pairs["split/query"]) == 6 and len(pairs["split/train"]) == 20
    # the archives were reused and unpacked, not fetched
    log = (tmp_path / "logs/download_dataset/mirflickr25k.log").read_text()
    assert "mirflickr25k.zip already present" in log and "annotations_v080.zip already present" in log
    assert "downloaded" not in log
    assert (tmp_path / "resources/mirflickr25k/raw/mirflickr/im1.jpg").is_file()
    with open(tmp_path / "results/tables/map.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["dataset"], r["bits"], r["task"]) for r in rows} == {
        ("mirflickr25k", "8", "i2t"), ("mirflickr25k", "8", "t2i")}


def write_nuswide_archives(raw, stage) -> None:
    """The official NUS-WIDE archives as they unpack: ImageList/ in its folder, the rest flat."""
    write_official_files(stage, flat=True)
    raw.mkdir(parents=True)
    archives = {"ImageList.zip": ["Imagelist.txt"], "ConceptsList.zip": ["Concepts81.txt"],
                "NUS_WID_Tags.zip": ["TagList1k.txt", "AllTags1k.txt", "All_Tags.txt"],
                "Groundtruth.zip": [str(p.relative_to(stage)) for p in sorted(stage.glob("*/*.txt"))]}
    for archive, names in archives.items():
        with zipfile.ZipFile(raw / archive, "w") as zf:
            for name in names:
                zf.write(stage / name, "ImageList/" + name if archive == "ImageList.zip" else name)
    (raw / "NUS-WIDE-urls.rar").write_bytes(b"Rar!")  # kept for reference, never unpacked


def test_nuswide_photo_id_copy_with_placeholders_reaches_pairs(tmp_path):
    """download_dataset reuses the archives, prepare_dataset finds a photo-id-named copy and
    drops (allow_missing_images) the missing and placeholder images, build_pairs keeps the
    empty texts as all-zero bag-of-words rows."""
    raw = tmp_path / "resources/nuswide/raw"
    write_nuswide_archives(raw, tmp_path / "stage")
    _, keep, _ = expected(10)
    missing, stand_ins = list(keep[:3]), list(keep[3:13])
    write_photo_id_copy(raw / "nus_wide" / "images", skip=missing)
    for i in stand_ins:
        (raw / "nus_wide" / "images" / photo_copy_name(i)).write_bytes(placeholder_bytes())
    config = {**TINY_CONFIG, "datasets": {"nuswide": {
        "source": "nuswide", "n_query": 5, "n_train": 20, "split_seed": 6, "bow_dim": N_TAGS,
        "allow_missing_images": True}}}
    snakemake(tmp_path, "--cores", "1", "results/nuswide/pairs.h5",
              config=write_config(tmp_path / "nus.yaml", config))
    used = [i for i in keep if i not in missing + stand_ins]
    with h5py.File(tmp_path / "results/nuswide/pairs.h5") as pairs:
        bow, texts = pairs["bow"][:], [t.decode() for t in pairs["texts"][:]]
    assert bow.shape[0] == len(used)
    empty = np.array([not TAGS[i].any() for i in used])
    assert empty.any() and (bow[empty] == 0).all() and (bow[~empty].sum(1) > 0).all()
    assert {texts[r] for r in np.flatnonzero(empty)} == {EMPTY_TEXT_PLACEHOLDER}
    log = (tmp_path / "logs/prepare_dataset/nuswide.log").read_text()
    assert f"0 by imagelist_path, 0 by file_name, {len(keep) - 3} by photo_id; 3 not found" in log
    assert "all 10 placeholder images" in log and "dropped_placeholder_image=10" in log


def test_empty_text_in_own_manifest_needs_the_option(tmp_path):
    folder = tmp_path / "own"
    folder.mkdir()
    rows = [f"s{i}\timg{i}.jpg\t{'sky tree' if i % 4 else '--- ###'}\t{'a' if i % 2 else 'b'}"
            for i in range(12)]
    for i in range(12):
        (folder / f"img{i}.jpg").write_bytes(jpeg_bytes(i))
    (folder / "labels.txt").write_text("a\nb\n", encoding="utf-8")
    (folder / "manifest.tsv").write_text("id\timage\ttext\tlabels\n" + "\n".join(rows) + "\n",
                                         encoding="utf-8")
    dataset = {"source": "manifest", "manifest": str(folder / "manifest.tsv"), "n_query": 2,
               "n_train": 6, "split_seed": 0, "bow_dim": 5}
    config = write_config(tmp_path / "own.yaml", {**TINY_CONFIG, "datasets": {"own": dataset}})
    result = snakemake(tmp_path, "--cores", "1", "results/own/pairs.h5", config=config, check=False)
    assert result.returncode != 0
    log = (tmp_path / "logs/build_pairs/own.log").read_text()
    assert "manifest.tsv:2: sample 's0' has an empty text '--- ###'" in log and "allow_empty_text" in log
    config = write_config(tmp_path / "own.yaml", {**TINY_CONFIG, "datasets": {
        "own": {**dataset, "allow_empty_text": True}}})
    snakemake(tmp_path, "--cores", "1", "results/own/pairs.h5", config=config)
    with h5py.File(tmp_path / "results/own/pairs.h5") as pairs:
        assert (pairs["bow"][::4] == 0).all() and pairs["bow"].shape[0] == 12


def test_unpacked_files_of_all_three_datasets_are_used_offline(tmp_path, monkeypatch):
    """Every request goes to a proxy on a closed port: a download attempted would fail the
    run. The files of each dataset are already unpacked (no archive anywhere)."""
    resources = tmp_path / "resources"
    write_archives(resources / "mirflickr25k/raw")
    for archive in sorted((resources / "mirflickr25k/raw").glob("*.zip")):
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(archive.parent)
        archive.unlink()
    write_official_files(resources / "nuswide/raw/NUS-WIDE")
    write_imagelist_layout(resources / "nuswide/raw/NUS-WIDE")
    coco_raw, _ = _coco_raw(tmp_path, 2014)
    (resources / "coco").mkdir()
    coco_raw.rename(resources / "coco/raw")  # the miniature of test_real_datasets: 15 pairs
    proxy = closed_port_url()
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(name, proxy)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    split = {"split_seed": 6, "bow_dim": 5}
    config = {**TINY_CONFIG, "datasets": {
        "mirflickr25k": {"source": "mirflickr25k", "n_query": 6, "n_train": 20, **split},
        "nuswide": {"source": "nuswide", "n_query": 5, "n_train": 20, **split},
        "coco": {"source": "coco", "n_query": 3, "n_train": 8, **split}}}
    snakemake(tmp_path, "--cores", "1", *(f"results/{d}/pairs.h5" for d in config["datasets"]),
              config=write_config(tmp_path / "three.yaml", config))

    unpacked = {"mirflickr25k": ["mirflickr25k.zip", "mirflickr25k_annotations_v080.zip"],
                "nuswide": ["ImageList.zip", "NUS_WID_Tags.zip", "Groundtruth.zip",
                            "ConceptsList.zip"],
                "coco": ["annotations_trainval2014.zip", "train2014.zip", "val2014.zip"]}
    for dataset, archives in unpacked.items():
        log = (tmp_path / f"logs/download_dataset/{dataset}.log").read_text()
        for archive in archives:
            assert f"{archive}: its files are in place, so it is neither downloaded nor " \
                   f"unpacked" in log
        assert "retrying" not in log and "egath.datasets.download: downloaded" not in log
        assert (resources / dataset / "raw/download.done").read_text() == \
            "".join(f"{archive}\tunpacked in place\n" for archive in archives)
        assert not list((resources / dataset / "raw").glob("*.zip"))
    assert "ImageList.zip: its files are in place, so it is neither downloaded nor unpacked: " \
           "resources/nuswide/raw/NUS-WIDE/ImageList/Imagelist.txt\n" in \
        (tmp_path / "logs/download_dataset/nuswide.log").read_text()

    _, keep, _ = expected(10)
    ids = {"mirflickr25k": [f"im{i}" for i in range(1, N_IMAGES + 1) if labels_of(i)],
           "nuswide": [sample_id(i) for i in keep], "coco": 15}
    for dataset, want in ids.items():
        with h5py.File(tmp_path / f"results/{dataset}/pairs.h5") as pairs:
            got = [s.decode() for s in pairs["ids"][:]]
        assert got == want if isinstance(want, list) else len(got) == want
