"""The NUS-WIDE preparer on miniatures of the copies people hold: the official files nested,
flat (as the archives unpack) or under a mirror's NUS-WIDE/ folder; images in the Imagelist
layout, in a copy named by Flickr photo id, and in a copy holding "photo unavailable"
placeholders. Real file formats, real JPEGs."""

import io
import logging
import os
import shutil
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from egath.cli import main
from egath.datasets.manifest import build_pairs
from egath.datasets.nuswide import photo_id, prepare_nuswide
from egath.datasets.raw import DatasetError
from egath.datasets.text import EMPTY_TEXT_PLACEHOLDER
from test_real_datasets import check_total, read_manifest, write_jpeg

N, N_CONCEPTS, N_TAGS = 60, 25, 30
CONCEPTS = sorted(f"concept{j:02d}" for j in range(N_CONCEPTS))
FOLDERS = ["actor", "airport", "zebra"]
TAG_NAMES = [f"tag{k}" for k in range(N_TAGS)]
SYMBOLS_ONLY = 5      # All_Tags.txt gives this image only punctuation: an empty text
SEPARATOR_IN_TAG = 6  # ... and this one a tag with U+2028 inside
TWICE = 59            # the photo of image 58, listed again


def _data():
    rng = np.random.default_rng(0)
    p = np.linspace(0.35, 0.02, N_CONCEPTS)
    labels = (rng.random((N, N_CONCEPTS)) < p).astype(int)
    labels[[3, 17, 40]] = 0  # no concept at all
    labels[[TWICE - 1, TWICE], 0] = 1
    tags = (rng.random((N, N_TAGS)) < 0.1).astype(int)
    tags[::7] = 0  # some images without any 1k tag
    tags[[SYMBOLS_ONLY, SEPARATOR_IN_TAG]] = 1
    files = [(FOLDERS[i % 3], f"{i + 1:04d}_{1000 + 17 * i}.jpg") for i in range(N)]
    # Imagelist.txt names a few photos twice, in two folders (six of them in the real one)
    files[TWICE] = (FOLDERS[TWICE % 3], f"{TWICE + 1:04d}_{1000 + 17 * (TWICE - 1)}.jpg")
    return labels, tags, files


LABELS, TAGS, FILES = _data()


def raw_tags(i):
    """Image i's line of All_Tags.txt after the photo id: its tags of TagList1k.txt, and
    for every third image one that is not listed there."""
    if i == SYMBOLS_ONLY:
        return "--- ###"
    if i == SEPARATOR_IN_TAG:
        return "new\u2028york"
    return " ".join([n for n, v in zip(TAG_NAMES, TAGS[i]) if v] + [f"unlisted{i}"] * (i % 3 == 0))


def has_listed_tag(i):
    return bool(TAGS[i].any()) and i not in (SYMBOLS_ONLY, SEPARATOR_IN_TAG)


def has_word(i):
    return bool(TAGS[i].any() or i % 3 == 0) and i != SYMBOLS_ONLY


def expected(k):
    """(label names, kept rows, their labels) of the k most frequent concepts."""
    freq = LABELS.sum(0)
    top = sorted(sorted(range(N_CONCEPTS), key=lambda j: (-freq[j], j))[:k])
    Y = LABELS[:, top]
    keep = np.flatnonzero(Y.any(1))
    return [CONCEPTS[j] for j in top], keep, Y[keep]


def sample_id(i):
    return f"{FILES[i][0]}/{FILES[i][1][:-4]}"


def write_official_files(root: Path, flat: bool = False) -> None:
    """The four official archives unpacked in `root`: in their folders, or flat."""
    files = {  # (path in the folders, path flat): text
        ("ImageList/Imagelist.txt", "Imagelist.txt"): "\r\n".join(
            f"C:\\ImageData\\Flickr\\{c}\\{f}" if i % 10 == 0 else f"{c}\\{f}"
            for i, (c, f) in enumerate(FILES)) + "\r\n",
        ("ConceptsList/Concepts81.txt", "Concepts81.txt"): "\n".join(CONCEPTS) + "\n",
        ("NUS_WID_Tags/TagList1k.txt", "TagList1k.txt"): "\n".join(TAG_NAMES) + "\n",
        ("NUS_WID_Tags/AllTags1k.txt", "AllTags1k.txt"):
            "".join("\t".join(map(str, row)) + "\t\n" for row in TAGS),
        ("NUS_WID_Tags/All_Tags.txt", "All_Tags.txt"):
            "".join(f"{photo_id(f)}      {raw_tags(i)}\n" for i, (c, f) in enumerate(FILES)),
        # Not read: the train/test label files, one of which really holds a -1130179.
        ("Groundtruth/TrainTestLabels/Labels_lake_Train.txt",
         "TrainTestLabels/Labels_lake_Train.txt"): "0\n-1130179\n",
    }
    for j, c in enumerate(CONCEPTS):
        files[(f"Groundtruth/AllLabels/Labels_{c}.txt", f"AllLabels/Labels_{c}.txt")] = \
            "".join(f"{v}\n" for v in LABELS[:, j])
    for (nested, flat_path), text in files.items():
        path = root / (flat_path if flat else nested)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8", newline="")


def write_imagelist_layout(root: Path) -> None:
    """Images as Imagelist.txt names them; every ninth in a flat images/ folder."""
    for i, (c, f) in enumerate(FILES):
        write_jpeg(root / "images" / f if i % 9 == 4 else root / "Flickr" / c / f, i)


def photo_copy_name(i):
    """A file name after Flickr's URL: <n>_<photo id>_<secret>_m.jpg."""
    return f"{50000 + i}_{photo_id(FILES[i][1])}_{i:010x}_m.jpg"


def write_photo_id_copy(folder: Path, skip=()) -> None:
    """One file per photo, named after Flickr's URL."""
    for i in range(N):
        if i not in skip and i != TWICE:
            write_jpeg(folder / photo_copy_name(i), i)


def placeholder_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (50, 37), (210, 210, 210)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def nus_raw(tmp_path):
    raw = tmp_path / "raw"
    write_official_files(raw)
    write_imagelist_layout(raw)
    return raw


# ----------------------------------------------------------------------------- layouts

def write_dchmt_layout(raw: Path) -> Path:
    """The folders DCHMT's make_nuswide.py reads: Low-Level-Features/ImageList/,
    Low-Level-Features/NUS_WID_Tags/, Low-Level-Features/Concepts81.txt,
    nuswide/Groundtruth/AllLabels/ and the images in nuswide/Flickr/."""
    features = raw / "Low-Level-Features"
    write_official_files(features)
    (features / "ConceptsList" / "Concepts81.txt").rename(features / "Concepts81.txt")
    (raw / "nuswide").mkdir()
    (features / "Groundtruth").rename(raw / "nuswide" / "Groundtruth")
    write_imagelist_layout(raw / "nuswide")
    return raw / "nuswide"


@pytest.mark.parametrize("layout", ["nested", "flat", "mirror folder", "DCHMT's folders"])
def test_official_layouts(tmp_path, layout, caplog):
    raw = tmp_path / "raw"
    root = raw / "NUS-WIDE" if layout == "mirror folder" else raw
    if layout == "DCHMT's folders":
        root = write_dchmt_layout(raw)
    else:
        write_official_files(root, flat=layout == "flat")
        write_imagelist_layout(root)
    caplog.set_level(logging.INFO)
    counts = prepare_nuswide(raw, tmp_path / "out")
    names, keep, Y = expected(10)
    rows, labels, got = read_manifest(tmp_path / "out")
    assert labels == names
    assert [r[0] for r in rows] == [sample_id(i) for i in keep]
    np.testing.assert_array_equal(got, Y)
    for row, i in zip(rows, keep):
        assert row[2] == " ".join(f"tag{k}" for k in np.flatnonzero(TAGS[i]))
    by_name = sum(1 for i in keep if i % 9 == 4)
    assert counts["images_by_imagelist_path"] == len(keep) - by_name
    assert counts["images_by_file_name"] == by_name > 0
    assert counts["images_by_photo_id"] == 0
    assert counts["read"] == N and counts["kept"] == len(keep)
    check_total(counts)
    prefix = "../" + str(root.relative_to(tmp_path)) + "/"
    assert rows[0][1] == f"{prefix}Flickr/{FILES[keep[0]][0]}/{FILES[keep[0]][1]}"
    assert f"found {len(keep) - by_name} by imagelist_path, {by_name} by file_name, " \
           f"0 by photo_id; 0 not found" in caplog.text


@pytest.mark.parametrize("protocol,k", [("egath", 10), ("dchmt", 21)])
def test_protocols_keep_exactly_the_images_with_a_label(nus_raw, tmp_path, protocol, k):
    counts = prepare_nuswide(nus_raw, tmp_path / "out", protocol=protocol)
    names, keep, Y = expected(k)
    rows, labels, got = read_manifest(tmp_path / "out")
    assert labels == names and len(labels) == k
    assert [r[0] for r in rows] == [sample_id(i) for i in keep]   # no label: dropped; all else kept
    np.testing.assert_array_equal(got, Y)
    assert counts["dropped_no_label"] == N - len(keep) > 0
    assert counts["dropped_empty_text"] == 0
    texts = {r[0]: r[2] for r in rows}
    if protocol == "egath":
        empty = [i for i in keep if not TAGS[i].any()]
    else:
        empty = [i for i in keep if not has_word(i)]
        # All_Tags.txt is split on "\n" only: U+2028 stays inside its tag's line
        assert texts[sample_id(SEPARATOR_IN_TAG)] == "new york"
        assert texts[sample_id(0)] == raw_tags(0)
    assert counts["empty_text_kept"] == len(empty) > 0
    assert all(texts[sample_id(i)] in ("", "--- ###") for i in empty)


def test_dropping_empty_texts_is_a_choice(nus_raw, tmp_path):
    counts = prepare_nuswide(nus_raw, tmp_path / "out", drop_empty_text=True)
    _, keep, _ = expected(10)
    empty = sum(1 for i in keep if not TAGS[i].any())
    assert counts["dropped_empty_text"] == empty and counts["kept"] == len(keep) - empty
    assert counts["empty_text_kept"] == 0
    check_total(counts)


def test_kept_empty_texts_become_all_zero_bag_of_words_rows(nus_raw, tmp_path):
    out = tmp_path / "out"
    counts = prepare_nuswide(nus_raw, out)
    _, keep, _ = expected(10)
    with pytest.raises(ValueError, match="has an empty text.*allow_empty_text"):
        build_pairs(out / "manifest.tsv", tmp_path / "p.h5", "nus", bow_dim=N_TAGS, n_query=5,
                    n_train=10, split_seed=0)
    build_pairs(out / "manifest.tsv", tmp_path / "p.h5", "nus", bow_dim=N_TAGS, n_query=5,
                n_train=10, split_seed=0, allow_empty_text=True)
    with h5py.File(tmp_path / "p.h5") as f:
        bow, texts = f["bow"][:], [t.decode() for t in f["texts"][:]]
        vocabulary = [v.decode() for v in f["vocabulary"][:]]
    assert bow.shape[0] == len(keep) == counts["kept"]
    empty = np.array([not TAGS[i].any() for i in keep])
    assert empty.sum() == counts["empty_text_kept"]
    assert (bow[empty] == 0).all() and (bow[~empty].sum(1) > 0).all()
    assert {texts[r] for r in np.flatnonzero(empty)} == {EMPTY_TEXT_PLACEHOLDER}
    for r, i in enumerate(keep):
        assert {vocabulary[c] for c in np.flatnonzero(bow[r])} == \
            {f"tag{k}" for k in np.flatnonzero(TAGS[i])}


def test_dchmt_empty_texts_are_those_without_a_tag_of_the_1k_list(nus_raw, tmp_path):
    """iTomxy/data's make.clean.py (whose counts are 190,421 and 181,365) drops the images
    with none of TagList1k's tags, not those with no tag at all."""
    counts = prepare_nuswide(nus_raw, tmp_path / "out", protocol="dchmt", drop_empty_text=True)
    _, keep, _ = expected(21)
    dropped = [i for i in keep if not has_listed_tag(i)]
    assert counts["dropped_empty_text"] == len(dropped) and counts["kept"] == len(keep) - len(dropped)
    assert sum(has_word(i) for i in dropped) >= 2  # tags, but none of the list: dropped too
    rows, _, _ = read_manifest(tmp_path / "out")
    assert [r[0] for r in rows] == [sample_id(i) for i in keep if has_listed_tag(i)]
    check_total(counts)


def test_egath_pairs_keeps_empty_texts_on_request(nus_raw, tmp_path):
    """The command line has the options of the config: --allow-empty-text, --labels."""
    counts = prepare_nuswide(nus_raw, tmp_path / "out")
    manifest, pairs = tmp_path / "out" / "manifest.tsv", tmp_path / "pairs.h5"
    labels = tmp_path / "labels.txt"
    (tmp_path / "out" / "labels.txt").rename(labels)
    args = ["pairs", str(manifest), str(pairs), "--dataset", "nus", "--bow-dim", str(N_TAGS),
            "--n-query", "5", "--n-train", "10", "--split-seed", "0", "--labels", str(labels)]
    with pytest.raises(ValueError, match="has an empty text.*egath pairs --allow-empty-text"):
        main(args)
    main(args + ["--allow-empty-text"])
    with h5py.File(pairs) as f:
        assert f["bow"].shape[0] == counts["kept"]
        assert int((f["bow"][:].sum(1) == 0).sum()) == counts["empty_text_kept"] > 0


def test_a_tag_list_ending_in_blank_lines_is_read(nus_raw, tmp_path):
    before = prepare_nuswide(nus_raw, tmp_path / "out")
    tag_list = nus_raw / "NUS_WID_Tags" / "TagList1k.txt"
    tags = tag_list.read_text().splitlines()
    tag_list.write_text("\n".join(tags) + "\n\r\n\n")
    assert prepare_nuswide(nus_raw, tmp_path / "out2") == before
    assert (tmp_path / "out2" / "manifest.tsv").read_bytes() == \
        (tmp_path / "out" / "manifest.tsv").read_bytes()
    tag_list.write_text("\n".join(tags[:3] + [""] + tags[3:]) + "\n")
    with pytest.raises(DatasetError) as e:
        prepare_nuswide(nus_raw, tmp_path / "out3")
    assert str(e.value) == f"corrupt {tag_list}: line 4 is blank, expected one tag a line"
    tag_list.write_text("\n".join(tags + ["one_more"]) + "\n")
    with pytest.raises(DatasetError) as e:
        prepare_nuswide(nus_raw, tmp_path / "out3")
    assert str(e.value) == (f"corrupt {nus_raw}/NUS_WID_Tags/AllTags1k.txt: line 1 holds "
                            f"{N_TAGS} values, but {tag_list} lists {N_TAGS + 1} tags")


def test_a_truncated_imagelist_is_named(nus_raw, tmp_path):
    imagelist = nus_raw / "ImageList" / "Imagelist.txt"
    lines = imagelist.read_bytes().split(b"\r\n")[:-1]
    imagelist.write_bytes(b"\r\n".join(lines[:-3]) + b"\r\n")
    with pytest.raises(DatasetError) as e:
        prepare_nuswide(nus_raw, tmp_path / "out")
    assert str(e.value) == (
        f"{imagelist} has {N - 3} lines, but each of the {N_CONCEPTS} label files in "
        f"{nus_raw}/Groundtruth/AllLabels has {N} values (the official Imagelist.txt has "
        f"269,648 lines, one per value): Imagelist.txt is truncated or from another copy")


@pytest.mark.parametrize("given", ["parent", "Flickr", "absent"])
def test_a_wrong_raw_folder_is_named(nus_raw, tmp_path, given):
    folder = {"parent": tmp_path, "Flickr": nus_raw / "Flickr", "absent": tmp_path / "raw2"}[given]
    with pytest.raises(DatasetError) as e:
        prepare_nuswide(folder, tmp_path / "out")
    last = str(e.value).split("\n")[-2]  # before the line on downloading the official files
    if given == "absent":
        assert last == f"The folder {folder} does not exist."
    elif given == "parent":
        assert last == (f"{nus_raw}/ImageList/Imagelist.txt exists: {nus_raw} is one level "
                        f"inside {folder}. The files belong directly in the raw folder: move "
                        f"its contents into {folder}, or name {nus_raw} as the raw folder.")
    else:
        assert last == (f"{nus_raw}/ImageList/Imagelist.txt exists: {nus_raw} is the folder "
                        f"above {folder}. The files belong directly in the raw folder: name "
                        f"{nus_raw} as the raw folder.")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- image copies

def test_copy_named_by_photo_id_alone(tmp_path, caplog):
    """coco-cn's NUS-WIDE images and flat copies name a file after its photo id alone."""
    raw = tmp_path / "raw"
    write_official_files(raw)
    for i in range(N):
        if i != TWICE:  # one file for the photo listed twice
            write_jpeg(raw / "nuswide100" / f"{photo_id(FILES[i][1])}.jpg", i)
    caplog.set_level(logging.INFO)
    counts = prepare_nuswide(raw, tmp_path / "out")
    _, keep, _ = expected(10)
    assert (counts["images_by_imagelist_path"], counts["images_by_file_name"],
            counts["images_by_photo_id"], counts["kept"]) == (0, 0, len(keep), len(keep))
    assert f"{N - 1} image files under {raw}; of the {len(keep)} images needed, found 0 by " \
           f"imagelist_path, 0 by file_name, {len(keep)} by photo_id; 0 not found" in caplog.text
    paths = {r[0]: r[1] for r in read_manifest(tmp_path / "out")[0]}
    assert paths[sample_id(keep[0])] == f"../raw/nuswide100/{photo_id(FILES[keep[0]][1])}.jpg"
    assert paths[sample_id(TWICE)] == paths[sample_id(TWICE - 1)]


@pytest.mark.parametrize("first_row", [0, 1])
def test_links_named_by_row_are_found_by_their_target(tmp_path, first_row):
    """A folder of links images/<row>.jpg to the Imagelist layout elsewhere (as iTomxy/data's
    make.image.link.py makes, from 0); counted from 1 it works as well."""
    raw, copy = tmp_path / "raw", tmp_path / "copy"
    write_official_files(raw)
    (raw / "images").mkdir()
    for i, (c, f) in enumerate(FILES):
        write_jpeg(copy / "Flickr" / c / f, i)
        (raw / "images" / f"{i + first_row}.jpg").symlink_to(copy / "Flickr" / c / f)
    counts = prepare_nuswide(raw, tmp_path / "out")
    _, keep, _ = expected(10)
    assert counts["images_by_imagelist_path"] == counts["kept"] == len(keep)
    paths = {r[0]: r[1] for r in read_manifest(tmp_path / "out")[0]}
    for i in keep:
        assert paths[sample_id(i)] == f"../raw/images/{i + first_row}.jpg"
        assert os.path.realpath(tmp_path / "out" / paths[sample_id(i)]) == \
            str((copy / "Flickr" / FILES[i][0] / FILES[i][1]).resolve())


def test_files_named_by_row_are_named_not_guessed(tmp_path):
    raw = tmp_path / "raw"
    write_official_files(raw)
    _, keep, _ = expected(10)
    # one photo id of the list is 7, and images/7.jpg is row 7's image, not that photo
    imagelist = raw / "ImageList" / "Imagelist.txt"
    lines = imagelist.read_text().split("\n")
    lines[keep[5]] = f"{FILES[keep[5]][0]}\\{keep[5] + 1:04d}_7.jpg\r"
    imagelist.write_text("\n".join(lines))
    for i in range(N):
        write_jpeg(raw / "images" / f"{i}.jpg", i)
    with pytest.raises(DatasetError) as e:
        prepare_nuswide(raw, tmp_path / "out")
    lines = str(e.value).split("\n")
    assert lines[0] == f"NUS-WIDE: {len(keep)} of {len(keep)} images are missing; the first 10:"
    assert lines[11] == (
        f"{N} image files (e.g. {raw}/images/0.jpg) in {raw}/images are named by a number that "
        f"is no Flickr photo id of Imagelist.txt: numbered by row of Imagelist.txt? Such files "
        f"cannot be matched safely (counted from 0 or from 1?) and are not used. Make them links "
        f"to the images named as in Imagelist.txt (links are matched by their target), or use "
        f"the copy they were made from.")


def test_no_image_found_is_an_error_even_when_missing_images_are_allowed(tmp_path):
    raw = tmp_path / "raw"
    write_official_files(raw)
    write_jpeg(raw / "images" / "unrelated.jpg", 0)
    with pytest.raises(DatasetError) as e:
        prepare_nuswide(raw, tmp_path / "out", allow_missing_images=True)
    _, keep, _ = expected(10)
    assert str(e.value).split("\n")[0] == (
        f"NUS-WIDE (egath): none of the {N} samples read is kept (dropped_no_label="
        f"{N - len(keep)}, dropped_missing_image={len(keep)}). allow_missing_images drops the "
        f"samples whose image is missing, but an empty set is an error, not a dataset.")
    assert not (tmp_path / "out").exists()


def test_images_still_in_an_archive_are_named(tmp_path):
    raw = tmp_path / "raw"
    write_official_files(raw)
    write_imagelist_layout(tmp_path / "stage")
    (raw / "ImageList.zip").write_bytes(b"PK")  # an official archive: holds no image
    with tarfile.open(raw / "Flickr.tar", "w") as tf:
        tf.add(tmp_path / "stage" / "Flickr", "Flickr")
        tf.add(tmp_path / "stage" / "images", "images")
    with pytest.raises(DatasetError) as e:
        prepare_nuswide(raw, tmp_path / "out")
    _, keep, _ = expected(10)
    lines = str(e.value).split("\n")
    assert lines[0] == f"NUS-WIDE: {len(keep)} of {len(keep)} images are missing; the first 10:"
    size = (raw / "Flickr.tar").stat().st_size
    assert lines[11] == (f"Still packed under {raw}: {raw}/Flickr.tar ({size:,} bytes). Images "
                         f"inside an archive are not read: unpack it in {raw} (e.g. tar -xf "
                         f"{raw}/Flickr.tar -C {raw}, or unzip for a .zip).")
    with tarfile.open(raw / "Flickr.tar") as tf:
        tf.extractall(raw, filter="data")
    assert prepare_nuswide(raw, tmp_path / "out")["kept"] == len(keep)


def test_photo_id_named_copy(tmp_path, caplog):
    """A flat copy named after Flickr's URLs, as HashNet's nus_wide.tar.gz; one image in the
    Imagelist layout, one under its Imagelist name, twelve missing."""
    raw = tmp_path / "raw"
    write_official_files(raw)
    _, keep, _ = expected(10)
    missing = list(keep[2:14])
    write_photo_id_copy(raw / "nus_wide" / "images", skip=missing)
    write_jpeg(raw / "Flickr" / FILES[keep[0]][0] / FILES[keep[0]][1], 0)
    write_jpeg(raw / "other" / FILES[keep[1]][1], 1)
    with pytest.raises(DatasetError) as e:
        prepare_nuswide(raw, tmp_path / "out")
    msg = str(e.value)
    assert f"12 of {len(keep)} images are missing; the first 10:" in msg
    named = [f"{FILES[i][0]}\\{FILES[i][1]} (photo {photo_id(FILES[i][1])})" for i in missing]
    assert all(m in msg for m in named[:10]) and not any(m in msg for m in named[10:])
    assert "photo id" in msg and "allow_missing_images" in msg
    assert not (tmp_path / "out").exists()

    caplog.set_level(logging.INFO)
    counts = prepare_nuswide(raw, tmp_path / "out", allow_missing_images=True)
    n_photo = len(keep) - 2 - 12
    assert (counts["images_by_imagelist_path"], counts["images_by_file_name"],
            counts["images_by_photo_id"]) == (1, 1, n_photo)
    assert counts["dropped_missing_image"] == 12 and counts["kept"] == len(keep) - 12
    check_total(counts)
    assert f"found 1 by imagelist_path, 1 by file_name, {n_photo} by photo_id; 12 not found" \
        in caplog.text
    assert "12 of" in caplog.text and named[0] in caplog.text  # dropped, not silently
    rows, _, _ = read_manifest(tmp_path / "out")
    paths = {r[0]: r[1] for r in rows}
    assert paths[sample_id(keep[0])] == f"../raw/Flickr/{FILES[keep[0]][0]}/{FILES[keep[0]][1]}"
    assert paths[sample_id(keep[1])] == f"../raw/other/{FILES[keep[1]][1]}"
    assert paths[sample_id(keep[-2])] == f"../raw/nus_wide/images/{photo_copy_name(keep[-2])}"
    assert sample_id(missing[0]) not in paths


def test_a_photo_listed_twice_shares_its_file(tmp_path, caplog):
    raw = tmp_path / "raw"
    write_official_files(raw)
    write_photo_id_copy(raw / "images")
    prepare_nuswide(raw, tmp_path / "out")
    paths = {r[0]: r[1] for r in read_manifest(tmp_path / "out")[0]}
    assert paths[sample_id(TWICE)] == paths[sample_id(TWICE - 1)] == \
        f"../raw/images/{photo_copy_name(TWICE - 1)}"
    # no warning of a photo id on several files or of a placeholder (the counts line names both)
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_photo_id_held_by_several_files_takes_the_first_in_path_order(tmp_path, caplog):
    raw = tmp_path / "raw"
    write_official_files(raw)
    write_photo_id_copy(raw / "small")
    _, keep, _ = expected(10)
    i = keep[3]
    write_jpeg(raw / "big" / photo_copy_name(i).replace("_m.jpg", "_b.jpg"), 99)
    prepare_nuswide(raw, tmp_path / "out")
    rows, _, _ = read_manifest(tmp_path / "out")
    assert dict((r[0], r[1]) for r in rows)[sample_id(i)].startswith("../raw/big/")
    assert "1 images were found by a photo id that several files carry" in caplog.text
    assert photo_id(FILES[i][1]) in caplog.text


def test_a_shared_photo_id_listed_twice_is_named_once(tmp_path, caplog):
    raw = tmp_path / "raw"
    write_official_files(raw)
    write_photo_id_copy(raw / "small")
    pid = photo_id(FILES[TWICE][1])
    write_jpeg(raw / "big" / f"{pid}.jpg", 99)
    prepare_nuswide(raw, tmp_path / "out")
    [warning] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warning == ("NUS-WIDE: 2 images were found by a photo id that several files carry; "
                       f"the first file in path order was used (1 photo ids: {pid})")


def test_copy_with_placeholder_images(tmp_path, caplog):
    """Twelve images of a photo-id copy are one file: Flickr's 'photo unavailable' image."""
    raw = tmp_path / "raw"
    write_official_files(raw)
    folder = raw / "NUS-WIDE" / "images"
    write_photo_id_copy(folder)
    _, keep, _ = expected(10)
    stand_ins = list(keep[5:17])
    for i in stand_ins:
        (folder / photo_copy_name(i)).write_bytes(placeholder_bytes())
    with pytest.raises(DatasetError) as e:
        prepare_nuswide(raw, tmp_path / "out")
    msg = str(e.value)
    assert f"12 of {len(keep)} images are placeholders" in msg and "not photos" in msg
    assert sample_id(stand_ins[0]).replace("/", "\\") in msg and "allow_missing_images" in msg
    assert not (tmp_path / "out").exists()

    caplog.set_level(logging.INFO)
    counts = prepare_nuswide(raw, tmp_path / "out", allow_missing_images=True)
    assert counts["dropped_placeholder_image"] == 12 and counts["dropped_missing_image"] == 0
    assert counts["kept"] == len(keep) - 12 and counts["images_by_photo_id"] == len(keep)
    check_total(counts)
    assert f"12 images are the same {len(placeholder_bytes())}-byte file" in caplog.text
    assert "all 12 placeholder images" in caplog.text
    assert all(photo_copy_name(i) in caplog.text for i in stand_ins)  # the whole list
    rows, _, _ = read_manifest(tmp_path / "out")
    assert not {sample_id(i) for i in stand_ins} & {r[0] for r in rows}


def test_missing_images_in_the_imagelist_layout(nus_raw, tmp_path):
    shutil.rmtree(nus_raw / "Flickr" / "zebra")
    _, keep, _ = expected(10)
    # TWICE is in zebra/, but its photo is also in airport/ and found by its photo id
    n_missing = sum(1 for i in keep if FILES[i][0] == "zebra" and i % 9 != 4 and i != TWICE)
    with pytest.raises(DatasetError) as e:
        prepare_nuswide(nus_raw, tmp_path / "out")
    msg = str(e.value)
    assert f"{n_missing} of {len(keep)} images are missing" in msg and "zebra\\" in msg
    assert "{raw_dir}" not in msg and f"{nus_raw}/Flickr/actor/0001_2124494179.jpg" in msg
    counts = prepare_nuswide(nus_raw, tmp_path / "out", allow_missing_images=True)
    assert counts["dropped_missing_image"] == n_missing
    check_total(counts)
    read_manifest(tmp_path / "out")


def test_tags_that_are_not_utf8_are_read_with_a_warning(nus_raw, tmp_path, caplog):
    i = next(i for i in expected(21)[1] if TAGS[i].any() and i not in (SYMBOLS_ONLY, SEPARATOR_IN_TAG))
    all_tags = nus_raw / "NUS_WID_Tags" / "All_Tags.txt"
    lines = all_tags.read_bytes().split(b"\n")
    lines[i] += b" caf\xe9"  # Latin-1, not UTF-8
    all_tags.write_bytes(b"\n".join(lines))
    prepare_nuswide(nus_raw, tmp_path / "out", protocol="dchmt")
    assert f"{all_tags}:{i + 1}: byte 0xe9" in caplog.text
    rows, _, _ = read_manifest(tmp_path / "out")
    assert dict((r[0], r[2]) for r in rows)[sample_id(i)].endswith(" caf\ufffd")


def test_corrupt_files(nus_raw, tmp_path):
    lab = nus_raw / "Groundtruth" / "AllLabels" / f"Labels_{CONCEPTS[3]}.txt"
    good = lab.read_text()
    lab.write_text(good.replace("0\n", "-1130179\n", 1))
    with pytest.raises(DatasetError, match=f"Labels_{CONCEPTS[3]}.txt: line"):
        prepare_nuswide(nus_raw, tmp_path / "out")
    lab.write_text(good + "0\n")
    with pytest.raises(DatasetError, match="61 values, expected 60"):
        prepare_nuswide(nus_raw, tmp_path / "out")
    lab.unlink()
    with pytest.raises(DatasetError, match=f"Labels_{CONCEPTS[3]}.txt"):
        prepare_nuswide(nus_raw, tmp_path / "out")
    lab.write_text(good)
    tags = nus_raw / "NUS_WID_Tags" / "AllTags1k.txt"
    tags.write_text("\n".join(tags.read_text().split("\n")[:-2]) + "\n")
    with pytest.raises(DatasetError, match="AllTags1k.txt: 59 lines, expected 60"):
        prepare_nuswide(nus_raw, tmp_path / "out")
    alltags = nus_raw / "NUS_WID_Tags" / "All_Tags.txt"
    lines = alltags.read_text(encoding="utf-8").split("\n")[:-1]
    alltags.write_text("\n".join(lines[1:] + lines[:1]) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="out of step"):
        prepare_nuswide(nus_raw, tmp_path / "out", protocol="dchmt")
    imagelist = nus_raw / "ImageList" / "Imagelist.txt"
    imagelist.write_text("actor\\0001_2124494179.jpg\r\nactor\\notes.txt\r\n")
    with pytest.raises(DatasetError, match=r"Imagelist.txt: line 2 is 'actor\\\\notes.txt'"):
        prepare_nuswide(nus_raw, tmp_path / "out")
    imagelist.unlink()
    with pytest.raises(DatasetError, match="Imagelist.txt"):
        prepare_nuswide(nus_raw, tmp_path / "out")


def test_copy_linked_into_raw_is_found(tmp_path):
    raw = tmp_path / "raw"
    write_official_files(raw)
    write_photo_id_copy(tmp_path / "elsewhere" / "nus_wide")
    (raw / "images").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere" / "loop").symlink_to(raw)  # a link back up is walked once
    counts = prepare_nuswide(raw, tmp_path / "out")
    assert counts["images_by_photo_id"] == counts["kept"] == len(expected(10)[1])


# ----------------------------------------------------------------------------- placeholders, documented

def documented_placeholder_copies() -> int:
    """The number of copies that makes a file a placeholder, as docs/datasets.md states it."""
    import re

    doc = (Path(__file__).resolve().parents[1] / "docs/datasets.md").read_text(encoding="utf-8")
    found = re.findall(r"A file whose bytes \*\*at least (\d+)\*\* of the needed images share", doc)
    assert len(found) == 1, "docs/datasets.md must state the placeholder threshold once"
    return int(found[0])


@pytest.mark.parametrize("below", [True, False])
def test_the_documented_number_of_copies_makes_a_placeholder(tmp_path, below):
    copies = documented_placeholder_copies() - below
    raw = tmp_path / "raw"
    write_official_files(raw)
    write_photo_id_copy(raw / "images")
    _, keep, _ = expected(10)
    for i in keep[:copies]:
        (raw / "images" / photo_copy_name(i)).write_bytes(placeholder_bytes())
    counts = prepare_nuswide(raw, tmp_path / "out", allow_missing_images=True)
    assert counts["dropped_placeholder_image"] == (0 if below else copies)
    assert counts["kept"] == len(keep) - counts["dropped_placeholder_image"]


def test_placeholders_among_missing_images_drop_exactly_their_own_samples(tmp_path):
    """Missing images shift the positions of the present ones: the samples dropped as
    placeholders must still be those whose file is the placeholder."""
    raw = tmp_path / "raw"
    write_official_files(raw)
    _, keep, _ = expected(10)
    missing, stand_ins = set(keep[:6]), set(keep[8:20])
    write_photo_id_copy(raw / "images", skip=missing)
    for i in stand_ins:
        (raw / "images" / photo_copy_name(i)).write_bytes(placeholder_bytes())
    counts = prepare_nuswide(raw, tmp_path / "out", allow_missing_images=True)
    assert (counts["dropped_missing_image"], counts["dropped_placeholder_image"]) == (6, 12)
    rows, _, _ = read_manifest(tmp_path / "out")
    kept = {r[0] for r in rows}
    assert kept == {sample_id(i) for i in keep} - {sample_id(i) for i in missing | stand_ins}
