"""The MIRFlickr25K and MS-COCO preparers on miniature copies of the original
layouts (real file names and formats, real JPEGs); NUS-WIDE: test_nuswide.py."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from egath.datasets.coco import prepare_coco
from egath.datasets.raw import DatasetError
from egath.datasets.mirflickr import MIRFLICKR_LABELS, prepare_mirflickr25k


def write_jpeg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (seed * 37 % 256, seed * 11 % 256, 90)).save(path, "JPEG")


def read_manifest(out: Path):
    labels = (out / "labels.txt").read_text(encoding="utf-8").splitlines()
    with open(out / "manifest.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    assert rows[0] == ["id", "image", "text", "labels"]
    rows = rows[1:]
    Y = np.zeros((len(rows), len(labels)), dtype=np.uint8)
    for r, row in enumerate(rows):
        assert len(row) == 4
        for name in filter(None, row[3].split(",")):
            Y[r, labels.index(name)] = 1
        assert (out / row[1]).is_file(), row[1]  # relative to the manifest's folder
    assert len({row[0] for row in rows}) == len(rows)
    return rows, labels, Y


def check_total(counts):
    dropped = sum(v for k, v in counts.items() if k.startswith("dropped_"))
    assert counts["read"] == counts["kept"] + dropped


# ----------------------------------------------------------------------------- MIRFlickr

N_MIR = 40


def _mir_labels(i):
    if i % 8 == 7:
        return set()
    return {MIRFLICKR_LABELS[i % 24], MIRFLICKR_LABELS[(i * 7) % 24]}


def _mir_tags(i):
    if i % 4 == 0:
        return []                                     # no tags at all
    if i % 4 == 1:
        return [f"rare{i}"]                           # only infrequent tags
    extra = ["cloud"] if i % 4 == 2 else []
    return [f"rare{i}", "sky"] + extra + ["sky"]    # "sky": 20 images, "cloud": 10


@pytest.fixture
def mir_raw(tmp_path):
    raw = tmp_path / "raw"
    base = raw / "mirflickr"
    for i in range(1, N_MIR + 1):
        write_jpeg(base / f"im{i}.jpg", i)
        tags = base / "meta" / "tags" / f"tags{i}.txt"
        tags.parent.mkdir(parents=True, exist_ok=True)
        tags.write_text("".join(t + "\r\n" for t in _mir_tags(i)), encoding="utf-8")
    (base / "doc").mkdir()
    (base / "doc" / "common_tags.txt").write_text("sky 20\ncloud 10\n")
    ann = raw / "mirflickr25k_annotations_v080"
    ann.mkdir()
    for name in MIRFLICKR_LABELS:
        ids = [i for i in range(1, N_MIR + 1) if name in _mir_labels(i)]
        (ann / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
        (ann / f"{name}_r1.txt").write_text("".join(f"{i}\n" for i in ids[:1]))
    (ann / "README.txt").write_text("MIRFLICKR-25000 annotations v080\n")
    return raw


def _mir_expected(protocol):
    keep = []
    for i in range(1, N_MIR + 1):
        if not _mir_labels(i):
            continue
        if protocol == "egath" and "sky" not in _mir_tags(i):
            continue
        keep.append(i)
    return keep


def test_mirflickr_egath(mir_raw, tmp_path):
    out = tmp_path / "out"
    counts = prepare_mirflickr25k(mir_raw, out)
    keep = _mir_expected("egath")
    assert counts["read"] == N_MIR
    assert counts["kept"] == len(keep) == 15
    assert counts["dropped_no_label"] == 5
    assert counts["dropped_no_frequent_tag"] == N_MIR - 5 - 15
    assert counts["dropped_missing_image"] == 0
    check_total(counts)
    rows, labels, Y = read_manifest(out)
    assert labels == list(MIRFLICKR_LABELS)
    assert [r[0] for r in rows] == [f"im{i}" for i in keep]
    assert rows[0][1] == "../raw/mirflickr/im2.jpg"
    for r, i in enumerate(keep):
        assert {labels[j] for j in np.flatnonzero(Y[r])} == _mir_labels(i)
        # Only the frequent tags, in file order, each once.
        assert rows[r][2] == "sky"
    # The fallback that counts tags from meta/tags gives the same selection.
    (mir_raw / "mirflickr" / "doc" / "common_tags.txt").unlink()
    counts2 = prepare_mirflickr25k(mir_raw, tmp_path / "out2")
    assert counts2 == counts
    assert (tmp_path / "out2" / "manifest.tsv").read_text().count("\n") == 16


def test_mirflickr_common_tag_threshold(mir_raw, tmp_path):
    counts = prepare_mirflickr25k(mir_raw, tmp_path / "out", min_tag_count=10)
    rows, _, _ = read_manifest(tmp_path / "out")
    assert counts["kept"] == 15  # "cloud" only adds to images that already have "sky"
    texts = {r[0]: r[2] for r in rows}
    assert texts["im2"] == "sky cloud" and texts["im3"] == "sky"


def test_mirflickr_dchmt_keeps_raw_tags(mir_raw, tmp_path):
    counts = prepare_mirflickr25k(mir_raw, tmp_path / "out", protocol="dchmt",
                                  absolute_paths=True, drop_empty_text=False)
    keep = _mir_expected("dchmt")
    assert counts["kept"] == len(keep) == 35
    assert counts["empty_text_kept"] == sum(1 for i in keep if not _mir_tags(i)) == 10
    counts = prepare_mirflickr25k(mir_raw, tmp_path / "out2", protocol="dchmt")
    assert counts["kept"] == 25 and counts["dropped_empty_text"] == 10
    assert counts["empty_text_kept"] == 0
    check_total(counts)
    rows, _, _ = read_manifest(tmp_path / "out")
    assert Path(rows[0][1]).is_absolute()
    texts = {r[0]: r[2] for r in rows}
    assert texts["im2"] == "rare2 sky cloud"


def test_mirflickr_keeps_tags_in_any_script(mir_raw, tmp_path):
    # Images 4 and 8 have no tags in the fixture; 4 gets tags in other scripts (dropped as
    # empty while the rule looked for ASCII letters only), 8 gets punctuation only.
    tags = mir_raw / "mirflickr" / "meta" / "tags"
    (tags / "tags4.txt").write_text("\u65e5\u672c\r\n\u03c0\u03cc\u03bb\u03b7\r\n", encoding="utf-8")
    (tags / "tags8.txt").write_text("---\r\n###\r\n", encoding="utf-8")
    counts = prepare_mirflickr25k(mir_raw, tmp_path / "out", protocol="dchmt")
    assert counts["dropped_empty_text"] == 9 and counts["kept"] == 26
    rows, _, _ = read_manifest(tmp_path / "out")
    texts = {r[0]: r[2] for r in rows}
    assert texts["im4"] == "\u65e5\u672c \u03c0\u03cc\u03bb\u03b7" and "im8" not in texts


def test_mirflickr_missing_image(mir_raw, tmp_path):
    (mir_raw / "mirflickr" / "im2.jpg").unlink()
    with pytest.raises(DatasetError) as e:
        prepare_mirflickr25k(mir_raw, tmp_path / "out")
    assert "1 of 15 images are missing" in str(e.value) and "im2.jpg" in str(e.value)
    assert "{raw_dir}" not in str(e.value) and str(mir_raw) in str(e.value)
    assert not (tmp_path / "out" / "manifest.tsv").exists()
    counts = prepare_mirflickr25k(mir_raw, tmp_path / "out", allow_missing_images=True)
    assert counts["dropped_missing_image"] == 1 and counts["kept"] == 14
    check_total(counts)


def test_mirflickr_without_images_is_an_error_even_when_missing_images_are_allowed(mir_raw,
                                                                                   tmp_path):
    for image in (mir_raw / "mirflickr").glob("im*.jpg"):
        image.unlink()
    with pytest.raises(DatasetError) as e:
        prepare_mirflickr25k(mir_raw, tmp_path / "out", allow_missing_images=True)
    assert str(e.value).split("\n")[0] == (
        f"MIRFlickr25K: none of the {N_MIR} samples read is kept (dropped_no_label=5, "
        f"dropped_no_frequent_tag=20, dropped_missing_image=15). allow_missing_images drops the "
        f"samples whose image is missing, but an empty set is an error, not a dataset.")
    assert not (tmp_path / "out").exists()


def test_mirflickr_bad_annotations(mir_raw, tmp_path):
    ann = mir_raw / "mirflickr25k_annotations_v080"
    (ann / "dog.txt").unlink()
    with pytest.raises(DatasetError, match="dog.txt"):
        prepare_mirflickr25k(mir_raw, tmp_path / "out")
    (ann / "dog.txt").write_text("3\nthree\n")
    with pytest.raises(DatasetError, match=r"dog.txt: line 2"):
        prepare_mirflickr25k(mir_raw, tmp_path / "out")
    (ann / "dog.txt").write_text("99999\n")
    with pytest.raises(DatasetError, match="no tags file"):
        prepare_mirflickr25k(mir_raw, tmp_path / "out")
    (ann / "dog.txt").write_text("")
    (mir_raw / "mirflickr" / "doc" / "common_tags.txt").write_text("sky twenty\n")
    with pytest.raises(DatasetError, match="common_tags.txt"):
        prepare_mirflickr25k(mir_raw, tmp_path / "out")


def test_mirflickr_missing_folders(tmp_path):
    with pytest.raises(DatasetError, match="mirflickr"):
        prepare_mirflickr25k(tmp_path / "nothing", tmp_path / "out")
    with pytest.raises(DatasetError, match=f"The folder {tmp_path}/nothing does not exist"):
        prepare_mirflickr25k(tmp_path / "nothing", tmp_path / "out")
    with pytest.raises(ValueError):
        prepare_mirflickr25k(tmp_path, tmp_path / "out", protocol="bogus")


def test_mirflickr_in_a_folder_one_level_down_is_named(mir_raw, tmp_path):
    (tmp_path / "copy").mkdir()
    mir_raw.rename(tmp_path / "copy" / "mirflickr25k_v3b")
    mir_raw.mkdir()
    with pytest.raises(DatasetError) as e:
        prepare_mirflickr25k(mir_raw.parent, tmp_path / "out")
    found = tmp_path / "copy" / "mirflickr25k_v3b"
    assert str(e.value).split("\n")[-2] == (
        f"{found}/mirflickr/meta/tags exists: {found} is two levels inside {mir_raw.parent}. "
        f"The files belong directly in the raw folder: move its contents into "
        f"{mir_raw.parent}, or name {found} as the raw folder.")


# ----------------------------------------------------------------------------- MS-COCO

CATS = [(90, "toothbrush"), (1, "person"), (10, "traffic light"), (3, "car")]


def _coco_split(raw, split, year, ids, id_offset):
    """Images `ids`; image k has instances unless k % 5 == 0, captions unless k == 7."""
    images, inst, caps = [], [], []
    for k in ids:
        iid = id_offset + k
        name = (f"COCO_{split}{year}_{iid:012d}.jpg" if year == 2014 else f"{iid:012d}.jpg")
        images.append({"id": iid, "file_name": name, "width": 8, "height": 8})
        write_jpeg(raw / f"{split}{year}" / name, iid)
        if k % 5:
            for c in {CATS[k % 4][0], CATS[(k * 3) % 4][0]}:
                inst.append({"id": len(inst) + 1 + 10 * iid, "image_id": iid, "category_id": c,
                             "bbox": [0, 0, 1, 1], "area": 1.0, "iscrowd": 0})
        if k != 7:
            for c in (3, 1, 2):  # caption ids out of order on purpose
                caps.append({"id": 100 * iid + c, "image_id": iid,
                             "caption": f"caption {c} of\timage {iid}\n"})
    ann = raw / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    common = {"info": {"year": year}, "licenses": [], "images": images}
    (ann / f"instances_{split}{year}.json").write_text(json.dumps(
        {**common, "annotations": inst,
         "categories": [{"id": i, "name": n, "supercategory": "x"} for i, n in CATS]}))
    (ann / f"captions_{split}{year}.json").write_text(json.dumps({**common, "annotations": caps}))
    return [(id_offset + k, images[n]["file_name"]) for n, k in enumerate(ids)]


def _coco_raw(tmp_path, year):
    raw = tmp_path / f"raw{year}"
    train = _coco_split(raw, "train", year, range(1, 13), 0)
    val = _coco_split(raw, "val", year, range(1, 9), 500)
    return raw, train + val


def test_coco_egath(tmp_path):
    raw, images = _coco_raw(tmp_path, 2014)
    out = tmp_path / "out"
    counts = prepare_coco(raw, out)
    assert counts["read"] == 20
    assert counts["dropped_no_instance"] == 2 + 1          # k = 5, 10 in train; 5 in val
    assert counts["dropped_no_caption"] == 2               # k = 7 in train and val
    assert counts["kept"] == 15 and counts["dropped_missing_image"] == 0
    check_total(counts)
    rows, labels, Y = read_manifest(out)
    assert labels == ["person", "car", "traffic light", "toothbrush"]  # by category id
    assert rows[0][0] == "COCO_train2014_000000000001"
    assert rows[0][1] == "../raw2014/train2014/COCO_train2014_000000000001.jpg"
    assert rows[0][2] == ("caption 1 of image 1 caption 2 of image 1 caption 3 of image 1")
    name_of = {i: n for i, n in CATS}
    k = 1
    assert {labels[j] for j in np.flatnonzero(Y[0])} == {name_of[CATS[k % 4][0]],
                                                         name_of[CATS[(k * 3) % 4][0]]}
    assert rows[-1][0] == "COCO_val2014_000000000508"


def test_coco_dchmt_2017_first_caption(tmp_path):
    raw, _ = _coco_raw(tmp_path, 2017)
    counts = prepare_coco(raw, tmp_path / "out", protocol="dchmt")
    assert counts["kept"] == 15
    rows, labels, _ = read_manifest(tmp_path / "out")
    assert rows[0][0] == "000000000001" and rows[0][2] == "caption 1 of image 1"
    assert rows[0][1].startswith("../raw2017/train2017/")
    with pytest.raises(DatasetError, match="instances_train2014.json"):
        prepare_coco(raw, tmp_path / "out", protocol="egath")  # 2014 files absent


def test_coco_errors(tmp_path):
    raw, _ = _coco_raw(tmp_path, 2014)
    (raw / "val2014" / "COCO_val2014_000000000501.jpg").unlink()
    with pytest.raises(DatasetError, match=r"1 of 15 images are missing(.|\n)*COCO_val2014_000000000501"):
        prepare_coco(raw, tmp_path / "out")
    counts = prepare_coco(raw, tmp_path / "out", allow_missing_images=True)
    assert counts["dropped_missing_image"] == 1 and counts["kept"] == 14
    cap = raw / "annotations" / "captions_val2014.json"
    cap.write_text(cap.read_text()[:50])
    with pytest.raises(DatasetError, match="corrupt COCO annotation file .*captions_val2014.json"):
        prepare_coco(raw, tmp_path / "out")
    cap.write_text(json.dumps({"images": []}))
    with pytest.raises(DatasetError, match=r"missing key\(s\) \['annotations'\]"):
        prepare_coco(raw, tmp_path / "out")
    (raw / "annotations" / "instances_train2014.json").unlink()
    with pytest.raises(DatasetError, match="missing COCO annotation file instances_train2014"):
        prepare_coco(raw, tmp_path / "out")


def test_coco_without_images_is_an_error_even_when_missing_images_are_allowed(tmp_path):
    raw, _ = _coco_raw(tmp_path, 2014)
    shutil.rmtree(raw / "train2014")
    shutil.rmtree(raw / "val2014")
    with pytest.raises(DatasetError) as e:
        prepare_coco(raw, tmp_path / "out", allow_missing_images=True)
    assert str(e.value).split("\n")[0] == (
        "MS-COCO 2014: none of the 20 samples read is kept (dropped_no_instance=3, "
        "dropped_no_caption=2, dropped_missing_image=15). allow_missing_images drops the "
        "samples whose image is missing, but an empty set is an error, not a dataset.")
    assert not (tmp_path / "out").exists()
