"""The real-dataset branch of the workflow, end to end, on a miniature MIRFlickr25K whose
archives are already in place: download_dataset must reuse them (no network), unpack them,
and prepare_dataset, build_pairs and the later stages run on the result."""
from __future__ import annotations

import csv
import io
import zipfile

import h5py
import numpy as np
import pytest
from PIL import Image

from egath.datasets.mirflickr import MIRFLICKR_LABELS
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
