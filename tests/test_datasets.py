"""Tests for egath.datasets.synthetic (the built-in dataset) and egath.datasets.manifest
(manifest -> pairs.h5: vocabulary, bag-of-words, splits, input checks)."""

import itertools
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from egath.datasets import manifest as M
from egath.datasets import synthetic as S
from egath.datasets.manifest import build_pairs
from egath.datasets.text import EMPTY_TEXT_PLACEHOLDER, is_empty_text

N_SYNTH = 120
IMAGE_SIZE = 16


# --------------------------------------------------------------------------- helpers

def make_images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (4, 4), (10, 20, 30)).save(folder / name)


def write_manifest(folder, rows, labels=("cat", "dog", "sky"), header="id\timage\ttext\tlabels",
                   make_missing_images=True):
    """rows: list of tab-joined strings or field tuples; images named in them are created."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [header]
    for row in rows:
        fields = row.split("\t") if isinstance(row, str) else list(row)
        if make_missing_images and len(fields) >= 2 and fields[1]:
            path = folder / fields[1]
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (4, 4)).save(path)
        lines.append("\t".join(fields))
    (folder / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
    manifest = folder / "manifest.tsv"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest


def read_pairs(path):
    with h5py.File(path, "r") as f:
        out = {}
        f.visititems(lambda name, obj: out.__setitem__(name, (obj[()], obj.dtype))
                     if isinstance(obj, h5py.Dataset) else None)
        attrs = dict(f.attrs)
    return out, attrs


def decode(values):
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    manifest = S.make_synthetic_dataset(root / "a", n_pairs=N_SYNTH, seed=3, image_size=IMAGE_SIZE)
    return manifest


def parse_manifest(path):
    lines = path.read_text().splitlines()
    return lines[0], [line.split("\t") for line in lines[1:]]


# --------------------------------------------------------------------------- synthetic

def test_synthetic_is_byte_identical_for_same_seed(synth, tmp_path):
    again = S.make_synthetic_dataset(tmp_path / "b", n_pairs=N_SYNTH, seed=3, image_size=IMAGE_SIZE)
    assert again.read_bytes() == synth.read_bytes()
    assert (again.parent / "labels.txt").read_bytes() == (synth.parent / "labels.txt").read_bytes()
    first = sorted(p.name for p in (synth.parent / "images").iterdir())
    second = sorted(p.name for p in (again.parent / "images").iterdir())
    assert first == second and len(first) == N_SYNTH
    for name in first:
        assert (synth.parent / "images" / name).read_bytes() == (again.parent / "images" / name).read_bytes()


def test_synthetic_differs_for_other_seed(synth, tmp_path):
    other = S.make_synthetic_dataset(tmp_path / "c", n_pairs=N_SYNTH, seed=4, image_size=IMAGE_SIZE)
    assert other.read_bytes() != synth.read_bytes()
    differing = sum((synth.parent / "images" / f"{i:06d}.png").read_bytes()
                    != (other.parent / "images" / f"{i:06d}.png").read_bytes() for i in range(N_SYNTH))
    assert differing > N_SYNTH // 2


def test_synthetic_rows_are_well_formed(synth):
    header, rows = parse_manifest(synth)
    assert header == "id\timage\ttext\tlabels"
    assert len(rows) == N_SYNTH
    kinds = set(S.KINDS)
    for i, (sample_id, image, text, labels) in enumerate(rows):
        assert sample_id == f"s{i:06d}"
        assert (synth.parent / image).is_file()
        with Image.open(synth.parent / image) as im:
            assert im.size == (IMAGE_SIZE, IMAGE_SIZE)
        assert text.strip() and M.tokenize(text)
        names = labels.split(",")
        assert 1 <= len(names) <= 3
        assert set(names) <= kinds
    # labels.txt lists the kinds, in the order of KINDS
    assert (synth.parent / "labels.txt").read_text().splitlines() == list(S.KINDS)


def test_synthetic_companions_cooccur_more_than_other_pairs(tmp_path):
    manifest = S.make_synthetic_dataset(tmp_path, n_pairs=400, seed=0, image_size=8)
    _, rows = parse_manifest(manifest)
    kinds = list(S.KINDS)
    counts = {pair: 0 for pair in itertools.combinations(kinds, 2)}
    for row in rows:
        names = sorted(set(row[3].split(",")), key=kinds.index)
        for pair in itertools.combinations(names, 2):
            counts[pair] += 1
    companion = [c for (a, b), c in counts.items() if S.COMPANIONS[a] == b]
    others = [c for (a, b), c in counts.items() if S.COMPANIONS[a] != b]
    assert len(companion) == 4 and len(others) == 24
    # every companion pair beats every non-companion pair, not only on average
    assert min(companion) > max(others)


def test_synthetic_rejects_no_pairs(tmp_path):
    with pytest.raises(ValueError, match="n_pairs"):
        S.make_synthetic_dataset(tmp_path, n_pairs=0)


def test_build_pairs_on_synthetic(synth, tmp_path):
    out = tmp_path / "pairs.h5"
    counts = build_pairs(synth, out, "synthetic", bow_dim=20, n_query=20, n_train=50, split_seed=5)
    data, attrs = read_pairs(out)
    n, c, v = N_SYNTH, len(S.KINDS), 20
    assert counts["samples"] == n and counts["n_query"] == 20 and counts["n_train"] == 50
    assert counts["n_database"] == 100
    expected = {
        "ids": ((n,), "O"), "image_paths": ((n,), "O"), "texts": ((n,), "O"),
        "labels": ((n, c), np.uint8), "label_names": ((c,), "O"),
        "bow": ((n, v), np.uint8), "vocabulary": ((v,), "O"),
        "split/query": ((20,), np.int64), "split/database": ((100,), np.int64),
        "split/train": ((50,), np.int64),
    }
    assert set(data) == set(expected)
    for name, (shape, dtype) in expected.items():
        values, stored = data[name]
        assert values.shape == shape, name
        if dtype == "O":
            assert h5py.check_string_dtype(stored) is not None, name
        else:
            assert stored == dtype, name
    assert decode(data["label_names"][0]) == list(S.KINDS)
    assert attrs["dataset"] == "synthetic"
    assert (attrs["n_query"], attrs["n_train"], attrs["split_seed"]) == (20, 50, 5)
    # labels of row i are the labels in the manifest's row i
    _, rows = parse_manifest(synth)
    kinds = list(S.KINDS)
    for i, row in enumerate(rows):
        expected_row = np.zeros(c, np.uint8)
        expected_row[[kinds.index(k) for k in row[3].split(",")]] = 1
        np.testing.assert_array_equal(data["labels"][0][i], expected_row)
    assert (data["labels"][0].sum(1) >= 1).all()
    # image paths open from the current directory
    for p in decode(data["image_paths"][0]):
        assert Path(p).parent.samefile(synth.parent / "images")


def test_split_partition_and_reproducibility(synth, tmp_path):
    build_pairs(synth, tmp_path / "a.h5", "s", bow_dim=10, n_query=17, n_train=40, split_seed=11)
    build_pairs(synth, tmp_path / "b.h5", "s", bow_dim=10, n_query=17, n_train=40, split_seed=11)
    build_pairs(synth, tmp_path / "c.h5", "s", bow_dim=10, n_query=17, n_train=40, split_seed=12)
    a, _ = read_pairs(tmp_path / "a.h5")
    b, _ = read_pairs(tmp_path / "b.h5")
    c, _ = read_pairs(tmp_path / "c.h5")
    q, db, tr = (a[f"split/{k}"][0] for k in ("query", "database", "train"))
    assert len(q) == 17 and len(db) == N_SYNTH - 17 and len(tr) == 40
    for idx in (q, db, tr):
        assert (np.diff(idx) > 0).all()  # ascending, no repeats
    assert not set(q) & set(db)
    assert set(q) | set(db) == set(range(N_SYNTH))
    assert set(tr) <= set(db)
    # the protocol of formats.md: one permutation from default_rng(seed)
    order = np.random.default_rng(11).permutation(N_SYNTH)
    np.testing.assert_array_equal(q, np.sort(order[:17]))
    np.testing.assert_array_equal(tr, np.sort(order[17:57]))
    for k in ("query", "database", "train"):
        np.testing.assert_array_equal(a[f"split/{k}"][0], b[f"split/{k}"][0])
    assert not np.array_equal(a["split/query"][0], c["split/query"][0])


# --------------------------------------------------------------------------- vocabulary / bow

HAND_ROWS = [
    "a1\ti/a1.png\tDog sky\tdog",
    "a2\ti/a2.png\tcat cat sky\tcat",
    "a3\ti/a3.png\tsky bird dog\tdog,sky",
    "a4\ti/a4.png\tbird, Zebra!\tsky",
    "a5\ti/a5.png\tant cat\tcat,dog",
]


def test_vocabulary_order_and_bow(tmp_path):
    manifest = write_manifest(tmp_path / "m", HAND_ROWS)
    out = tmp_path / "out" / "pairs.h5"
    build_pairs(manifest, out, "hand", bow_dim=4, n_query=1, n_train=2, split_seed=0)
    data, _ = read_pairs(out)
    # document frequencies (a word counts once per text):
    # sky 3 (a1,a2,a3); cat 2 (a2,a5); dog 2 (a1,a3); bird 2 (a3,a4); zebra 1; ant 1
    # -> sky first, then the ties at 2 alphabetically: bird, cat, dog; 4 words kept
    vocabulary = decode(data["vocabulary"][0])
    assert vocabulary == ["sky", "bird", "cat", "dog"]
    # bow rows, columns [sky, bird, cat, dog]; "Dog" is lower-cased, "Zebra!" and "ant"
    # are out of the vocabulary, "cat cat" is binary
    expected = np.array([[1, 0, 0, 1],
                         [1, 0, 1, 0],
                         [1, 1, 0, 1],
                         [0, 1, 0, 0],
                         [0, 0, 1, 0]], np.uint8)
    np.testing.assert_array_equal(data["bow"][0], expected)
    # brute force: each row is exactly the set of the text's vocabulary words
    texts = decode(data["texts"][0])
    for row, text in zip(data["bow"][0], texts):
        words = set(re.findall(r"[a-z0-9]+", text.lower()))
        assert {w for w, bit in zip(vocabulary, row) if bit} == words & set(vocabulary)
    assert texts[1] == "cat cat sky"
    assert decode(data["ids"][0]) == ["a1", "a2", "a3", "a4", "a5"]
    # labels in the column order of labels.txt (cat, dog, sky)
    np.testing.assert_array_equal(data["labels"][0], [[0, 1, 0], [1, 0, 0], [0, 1, 1], [0, 0, 1], [1, 1, 0]])


def test_vocabulary_smaller_than_bow_dim(tmp_path):
    manifest = write_manifest(tmp_path / "m", HAND_ROWS)
    build_pairs(manifest, tmp_path / "p.h5", "hand", bow_dim=100, n_query=1, n_train=2, split_seed=0)
    data, _ = read_pairs(tmp_path / "p.h5")
    # all 6 distinct words; zebra and ant tie at 1 -> ant before zebra
    assert decode(data["vocabulary"][0]) == ["sky", "bird", "cat", "dog", "ant", "zebra"]
    assert data["bow"][0].shape == (5, 6)


# --------------------------------------------------------------------------- bad input

def assert_nothing_written(out_dir):
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


BAD_CASES = {
    # name: (rows, header, expected exception, regex the message must match; {m} = manifest path)
    "duplicate id": (HAND_ROWS[:2] + ["a1\ti/a3.png\tsky\tsky"], None, ValueError,
                     r"{m}:4: duplicate id 'a1' \(first at line 2\)"),
    "unknown label": (HAND_ROWS[:2] + ["a3\ti/a3.png\tsky\tsky,horse"], None, ValueError,
                      r"{m}:4: sample 'a3' has labels not in .*labels\.txt.*horse"),
    "no labels": (HAND_ROWS[:1] + ["a2\ti/a2.png\tsky\t , "], None, ValueError,
                  r"{m}:3: sample 'a2' has no labels"),
    "wrong header": (HAND_ROWS, "id\tpath\ttext\tlabels", ValueError, r"{m}: header must be"),
    "too few fields": (HAND_ROWS[:2] + ["a3\ti/a3.png\tsky"], None, ValueError,
                       r"{m}:4: expected 4 tab-separated fields, found 3"),
    "too many fields": (HAND_ROWS[:1] + ["a2\ti/a2.png\tsky\tsky\textra"], None, ValueError,
                        r"{m}:3: expected 4 tab-separated fields, found 5"),
    "empty text": (HAND_ROWS[:3] + ["a4\ti/a4.png\t  \tsky"], None, ValueError,
                   r"{m}:5: sample 'a4' has an empty text"),
    "punctuation-only text": (HAND_ROWS[:1] + ["a2\ti/a2.png\t!!! ,\tsky"], None, ValueError,
                              r"{m}:3: sample 'a2' has an empty text"),
    # once accepted, with "---" and "###" as vocabulary words
    "symbols-only text": (HAND_ROWS[:1] + ["a2\ti/a2.png\t--- ###\tsky"], None, ValueError,
                          r"{m}:3: sample 'a2' has an empty text '--- ###': no word in it holds a "
                          r"letter or digit .*allow_empty_text"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_manifest_is_rejected_and_writes_nothing(tmp_path, case):
    rows, header, exc, pattern = BAD_CASES[case]
    kwargs = {"header": header} if header else {}
    manifest = write_manifest(tmp_path / "m", rows, **kwargs)
    out_dir = tmp_path / "out"
    with pytest.raises(exc) as info:
        build_pairs(manifest, out_dir / "pairs.h5", "bad", bow_dim=5, n_query=1, n_train=1, split_seed=0)
    assert re.search(pattern.format(m=re.escape(str(manifest))), str(info.value)), str(info.value)
    assert_nothing_written(out_dir)
    # a manifest-folder output must not be left behind either (no stray temp file)
    assert sorted(p.name for p in manifest.parent.iterdir()) == ["i", "labels.txt", "manifest.tsv"]


def test_missing_image_is_rejected(tmp_path):
    manifest = write_manifest(tmp_path / "m", HAND_ROWS)
    (tmp_path / "m" / "i" / "a3.png").unlink()
    out_dir = tmp_path / "out"
    with pytest.raises(FileNotFoundError) as info:
        build_pairs(manifest, out_dir / "pairs.h5", "bad", bow_dim=5, n_query=1, n_train=1, split_seed=0)
    message = str(info.value)
    assert f"{manifest}:4" in message and "'a3'" in message and "a3.png" in message
    assert_nothing_written(out_dir)


def test_absolute_image_path_is_accepted(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    make_images(elsewhere, ["x.png"])
    rows = HAND_ROWS[:2] + [f"a3\t{elsewhere / 'x.png'}\tsky\tsky"]
    manifest = write_manifest(tmp_path / "m", rows)
    build_pairs(manifest, tmp_path / "p.h5", "abs", bow_dim=5, n_query=1, n_train=1, split_seed=0)
    data, _ = read_pairs(tmp_path / "p.h5")
    paths = decode(data["image_paths"][0])
    assert paths[2] == str(elsewhere / "x.png")
    assert paths[0] == str(manifest.parent / "i" / "a1.png")


@pytest.mark.parametrize("n_query,n_train", [(3, 3), (5, 1), (1, 5)])
def test_split_larger_than_data_is_rejected(tmp_path, n_query, n_train):
    manifest = write_manifest(tmp_path / "m", HAND_ROWS)  # 5 samples
    out_dir = tmp_path / "out"
    with pytest.raises(ValueError, match=rf"n_query \+ n_train = {n_query + n_train} exceeds the 5 samples"):
        build_pairs(manifest, out_dir / "pairs.h5", "bad", bow_dim=5, n_query=n_query, n_train=n_train,
                    split_seed=0)
    assert_nothing_written(out_dir)


def test_split_size_error_names_the_manifest(tmp_path):
    manifest = write_manifest(tmp_path / "m", HAND_ROWS)
    with pytest.raises(ValueError) as info:
        build_pairs(manifest, tmp_path / "out" / "pairs.h5", "bad", bow_dim=5, n_query=3, n_train=3,
                    split_seed=0)
    assert str(manifest) in str(info.value)


def test_split_that_exactly_fits_is_accepted(tmp_path):
    manifest = write_manifest(tmp_path / "m", HAND_ROWS)
    build_pairs(manifest, tmp_path / "p.h5", "fit", bow_dim=5, n_query=2, n_train=3, split_seed=0)
    data, _ = read_pairs(tmp_path / "p.h5")
    # 2 queries + 3 training rows = all 5; train is then the whole database
    np.testing.assert_array_equal(data["split/train"][0], data["split/database"][0])


def test_failing_write_leaves_no_file(tmp_path, monkeypatch):
    # a crash while writing must not leave a half-written pairs.h5 or a temp file
    manifest = write_manifest(tmp_path / "m", HAND_ROWS)
    out_dir = tmp_path / "out"
    real = M.bag_of_words

    def bow_then_fail_on_write(texts, vocabulary):
        return real(texts, vocabulary).astype(object)  # h5py cannot store an object array

    monkeypatch.setattr(M, "bag_of_words", bow_then_fail_on_write)
    with pytest.raises(Exception):
        build_pairs(manifest, out_dir / "pairs.h5", "x", bow_dim=5, n_query=1, n_train=1, split_seed=0)
    assert_nothing_written(out_dir)


def test_duplicate_label_names_rejected(tmp_path):
    manifest = write_manifest(tmp_path / "m", HAND_ROWS, labels=("cat", "dog", "sky", "dog"))
    with pytest.raises(ValueError, match=r"labels\.txt: label names listed twice: \['dog'\]"):
        build_pairs(manifest, tmp_path / "o" / "p.h5", "x", bow_dim=5, n_query=1, n_train=1, split_seed=0)
    assert_nothing_written(tmp_path / "o")


# --------------------------------------------------------------------------- text and encoding

def test_words_of_any_script_count_and_punctuation_alone_never_does():
    assert M.tokenize("--- ### #Sunset new-york plant_life c++ \u00abEt\u00e9\u00bb \u65e5\u672c") == [
        "sunset", "new-york", "plant_life", "c", "et\u00e9", "\u65e5\u672c"]
    assert M.tokenize("--- ### \u00a1\u00bf \u2014 \u2605 !!") == []
    # a trailing vowel sign is a mark, not punctuation: the word stays whole
    assert M.tokenize("\u0939\u093f\u0902\u0926\u0940") == ["\u0939\u093f\u0902\u0926\u0940"]
    assert is_empty_text("--- ###") and is_empty_text("") and not is_empty_text("\u65e5\u672c !")


def test_punctuation_only_words_never_enter_the_vocabulary(tmp_path):
    manifest = write_manifest(tmp_path / "m", HAND_ROWS[:2] + ["a3\ti/a3.png\tsky --- ### !!\tsky"])
    build_pairs(manifest, tmp_path / "p.h5", "hand", bow_dim=100, n_query=1, n_train=1, split_seed=0)
    data, _ = read_pairs(tmp_path / "p.h5")
    assert decode(data["vocabulary"][0]) == ["sky", "cat", "dog"]


def test_empty_texts_are_kept_only_on_request(tmp_path):
    rows = HAND_ROWS[:3] + ["a4\ti/a4.png\t--- ###\tsky", "a5\ti/a5.png\t\tdog"]
    manifest = write_manifest(tmp_path / "m", rows)
    with pytest.raises(ValueError, match=r":5: sample 'a4' has an empty text.*allow_empty_text"):
        build_pairs(manifest, tmp_path / "p.h5", "e", bow_dim=10, n_query=1, n_train=2, split_seed=0)
    counts = build_pairs(manifest, tmp_path / "p.h5", "e", bow_dim=10, n_query=1, n_train=2,
                         split_seed=0, allow_empty_text=True)
    assert counts["empty_texts"] == 2 and counts["texts_without_vocabulary_words"] == 2
    data, attrs = read_pairs(tmp_path / "p.h5")
    bow, texts = data["bow"][0], decode(data["texts"][0])
    assert bow[3].sum() == bow[4].sum() == 0 and bow[:3].sum(1).min() > 0
    # CLIP reads `texts`: the placeholder stands in for an empty text, and is no vocabulary word
    assert texts[3] == texts[4] == EMPTY_TEXT_PLACEHOLDER == attrs["empty_text_placeholder"]
    assert texts[0] == "Dog sky"
    assert EMPTY_TEXT_PLACEHOLDER not in decode(data["vocabulary"][0])


def test_byte_order_mark_is_named(tmp_path):
    manifest = write_manifest(tmp_path / "m", HAND_ROWS)
    manifest.write_bytes(b"\xef\xbb\xbf" + manifest.read_bytes())
    with pytest.raises(ValueError, match=rf"{re.escape(str(manifest))}:1: .*byte-order mark \(BOM\)"):
        build_pairs(manifest, tmp_path / "o" / "p.h5", "x", bow_dim=5, n_query=1, n_train=1, split_seed=0)
    assert_nothing_written(tmp_path / "o")
    manifest = write_manifest(tmp_path / "m2", HAND_ROWS)
    labels = manifest.with_name("labels.txt")
    labels.write_bytes(b"\xef\xbb\xbf" + labels.read_bytes())
    with pytest.raises(ValueError, match=rf"{re.escape(str(labels))}:1: .*\(BOM\)"):
        build_pairs(manifest, tmp_path / "o" / "p.h5", "x", bow_dim=5, n_query=1, n_train=1, split_seed=0)


def test_non_utf8_manifest_names_file_line_and_byte(tmp_path):
    manifest = write_manifest(tmp_path / "m", HAND_ROWS)
    # "a4<TAB>i/a4.png<TAB>bird, Zebra!": a Latin-1 e-acute at column 20 of line 5
    manifest.write_bytes(manifest.read_bytes().replace(b"Zebra", b"Z\xe9bra"))
    with pytest.raises(ValueError) as info:
        build_pairs(manifest, tmp_path / "o" / "p.h5", "x", bow_dim=5, n_query=1, n_train=1, split_seed=0)
    assert f"{manifest}:5: byte 0xe9 at column 20 is not UTF-8" in str(info.value)
    assert_nothing_written(tmp_path / "o")


def test_lines_split_on_newline_only(tmp_path):
    # U+2028 (a line separator to str.splitlines) inside a text, and CRLF line ends
    rows = HAND_ROWS[:2] + ["a3\ti/a3.png\tsky\u2028bird\tsky"]
    manifest = write_manifest(tmp_path / "m", rows)
    manifest.write_bytes(manifest.read_bytes().replace(b"\n", b"\r\n"))
    build_pairs(manifest, tmp_path / "p.h5", "x", bow_dim=5, n_query=1, n_train=1, split_seed=0)
    data, _ = read_pairs(tmp_path / "p.h5")
    assert decode(data["texts"][0]) == ["Dog sky", "cat cat sky", "sky\u2028bird"]
    assert decode(data["label_names"][0]) == ["cat", "dog", "sky"]


def test_every_missing_image_is_counted_and_ten_named(tmp_path):
    rows = [f"s{i}\ti/s{i}.png\tword\tcat" for i in range(14)]
    manifest = write_manifest(tmp_path / "m", rows)
    for i in range(12):
        (tmp_path / "m" / "i" / f"s{i}.png").unlink()
    (tmp_path / "m" / "i" / "s0.png").mkdir()  # a directory where an image should be
    out_dir = tmp_path / "out"
    with pytest.raises(FileNotFoundError) as info:
        build_pairs(manifest, out_dir / "pairs.h5", "bad", bow_dim=5, n_query=1, n_train=1, split_seed=0)
    message = str(info.value)
    assert "12 image(s) missing or not files" in message and "... and 2 more" in message
    assert f"{manifest}:2: image of sample 's0' is a directory" in message
    assert f"{manifest}:11: image of sample 's9' not found" in message
    assert "'s10'" not in message  # beyond the first ten
    assert_nothing_written(out_dir)


def test_a_manifest_without_any_word_is_refused_even_with_empty_texts_allowed(tmp_path):
    rows = ["a1\ti/a1.png\t---\tdog", "a2\ti/a2.png\t\tcat", "a3\ti/a3.png\t###\tsky"]
    manifest = write_manifest(tmp_path / "m", rows)
    with pytest.raises(ValueError) as info:
        build_pairs(manifest, tmp_path / "o" / "p.h5", "e", bow_dim=10, n_query=1, n_train=1,
                    split_seed=0, allow_empty_text=True)
    message = str(info.value)
    assert f"{manifest}: none of the 3 texts has a word" in message and "Give the samples texts" in message
    assert_nothing_written(tmp_path / "o")


def test_one_image_under_two_ids_is_refused_counted_and_named(tmp_path):
    rows = HAND_ROWS + ["b1\ti/a2.png\tcat\tcat,sky", "b2\ti/a4.png\tsky\tsky", "b3\ti/./a2.png\tcat\tcat"]
    manifest = write_manifest(tmp_path / "m", rows)
    with pytest.raises(ValueError) as info:
        build_pairs(manifest, tmp_path / "o" / "p.h5", "d", bow_dim=10, n_query=1, n_train=1, split_seed=0)
    message = str(info.value)
    assert "3 row(s) name an image that an earlier row names" in message
    assert f"{manifest}:7: sample 'b1' has the image of sample 'a2' (line 3)" in message
    assert f"{manifest}:9: sample 'b3' has the image of sample 'a2' (line 3)" in message
    assert "allow_duplicate_images" in message
    assert_nothing_written(tmp_path / "o")


def test_duplicate_images_are_kept_when_allowed_and_counted(tmp_path, caplog):
    rows = HAND_ROWS + ["b1\ti/a2.png\tcat\tcat,sky"]
    manifest = write_manifest(tmp_path / "m", rows)
    with caplog.at_level("WARNING"):
        counts = build_pairs(manifest, tmp_path / "p.h5", "d", bow_dim=10, n_query=1, n_train=1,
                             split_seed=0, allow_duplicate_images=True)
    assert counts["samples"] == 6 and counts["duplicate_images"] == 1
    assert "1 row(s) name an image that an earlier row names" in caplog.text
    data, _ = read_pairs(tmp_path / "p.h5")
    paths = decode(data["image_paths"][0])
    assert paths[1] == paths[5] and len(set(paths)) == 5
