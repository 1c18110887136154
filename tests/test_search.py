"""Searching a collection by text or image with a trained model (egath.search, `egath index`,
`egath search`), on a small synthetic dataset with the tiny random-weights CLIP."""
import fnmatch
import json
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from egath.cli import main
from egath.datasets import build_pairs
from egath.datasets.synthetic import KINDS
from egath.features import load_clip
from egath.search import OutOfVocabularyError, SearchError, build_index, load_index, search
from egath.training import train
from search_demo import BITS, TINY, prepare_dataset, train_model


@pytest.fixture(scope="module")
def demo(search_demo):
    return search_demo


def _precision(hits, label):
    return np.mean([label in hit.labels for hit in hits])


def test_a_text_naming_a_shape_finds_images_of_that_shape(demo):
    index = load_index(demo["index"])
    precisions, chances = [], []
    for kind in KINDS:
        result = search(index, text=kind, k=10)
        assert result.searched == "image" and len(result.hits) == 10
        precisions.append(_precision(result.hits, kind))
        chances.append(index.labels[:, index.label_names.index(kind)].mean())
    # chance: a random image carries a given shape about 22% of the time
    assert np.mean(precisions) > 2 * np.mean(chances), (precisions, chances)


def test_an_image_finds_texts_of_its_labels(demo):
    index = load_index(demo["index"])
    with h5py.File(demo["pairs"]) as f:
        queries = f["split/query"][:30]
        paths = f["image_paths"].asstr()[()]
        labels = f["labels"][()]
    precisions, chances = [], []
    for row in queries:
        result = search(index, image=paths[row], k=5)
        assert result.searched == "text"
        shares = (index.labels @ labels[row]) > 0  # relevance of every collection item
        precisions.append(np.mean([shares[hit.row] for hit in result.hits]))
        chances.append(shares.mean())
    assert np.mean(precisions) > 1.5 * np.mean(chances), (precisions, chances)


def test_an_indexed_image_finds_itself_first_at_distance_zero(demo):
    # the query goes through the same CLIP, float16 rounding and model as the indexed image
    index = load_index(demo["index"])
    for row in (0, 7, 100):
        hit = search(index, image=index.image_paths[row], k=3, same_modality=True).hits[0]
        assert hit.distance == 0
        assert np.array_equal(index.codes["image"].words[:, row],
                              index.codes["image"].words[:, hit.row])


def test_ranking_is_exact_with_ties_by_collection_row(demo):
    result = search(demo["index"], text="red circle round", k=50)
    with h5py.File(demo["index"]) as f:
        codes = np.unpackbits(f["codes/image"][()], axis=1, count=BITS)
    query = np.array([int(bit) for bit in result.code], np.uint8)
    distances = (codes != query).sum(axis=1)
    order = np.argsort(distances, kind="stable")[:50]
    assert [hit.row for hit in result.hits] == order.tolist()
    assert [hit.distance for hit in result.hits] == distances[order].tolist()
    assert len(set(distances[order])) < 50  # the case has ties, so the tie rule is exercised


def test_the_index_records_what_it_belongs_with(demo):
    meta = load_index(demo["index"]).meta
    assert meta["bits"] == BITS and meta["method"] == "egath" and meta["dataset"] == "demo"
    assert meta["encoder"] == "egath-tiny-vit (none)" and meta["model_path"] == str(demo["model"])
    assert len(meta["model_sha256"]) == 64 and len(meta["vocabulary_sha256"]) == 64
    with h5py.File(demo["pairs"]) as f:
        assert meta["n"] == len(f["split/database"])


def test_the_cli_and_the_function_agree(demo, capsys):
    for args, kwargs in (((["--text", "blue star"]), {"text": "blue star"}),
                         ((["--text", "square", "--same-modality"]), {"text": "square", "same_modality": True})):
        main(["search", str(demo["index"]), *args, "--k", "7", "--json"])
        printed = json.loads(capsys.readouterr().out)
        assert printed == json.loads(json.dumps(search(demo["index"], k=7, **kwargs).to_dict()))
        assert len(printed["hits"]) == 7
    main(["search", str(demo["index"]), "--text", "blue star", "--k", "3"])
    text = capsys.readouterr().out
    first = search(demo["index"], text="blue star", k=3).hits[0]
    assert f"{first.id}  {first.image}" in text


def test_the_cli_builds_the_same_index(demo, tmp_path):
    main(["index", str(demo["model"]), str(tmp_path / "index.h5"), "--collection", str(demo["pairs"]),
          "--features", str(demo["features"]), "--device", "cpu"])
    with h5py.File(tmp_path / "index.h5") as a, h5py.File(demo["index"]) as b:
        for key in ("codes/image", "codes/text", "ids", "labels"):
            assert np.array_equal(a[key][()], b[key][()])


def test_a_manifest_collection_is_encoded_as_the_dataset_was(demo, tmp_path):
    # the first 40 samples of the dataset as a user's manifest: same CLIP, same vocabulary
    data = demo["root"] / "data"
    lines = (data / "manifest.tsv").read_text().splitlines()
    (tmp_path / "images").symlink_to(data / "images")
    (tmp_path / "manifest.tsv").write_text("\n".join(lines[:41]) + "\n")
    shutil.copy(data / "labels.txt", tmp_path / "labels.txt")
    main(["index", str(demo["model"]), str(tmp_path / "index.h5"), "--collection",
          str(tmp_path / "manifest.tsv"), "--pairs", str(demo["pairs"]), "--features",
          str(demo["features"]), "--device", "cpu", "--num-workers", "0"])
    mine, dataset = load_index(tmp_path / "index.h5"), load_index(demo["index"])
    assert len(mine) == 40 and mine.meta["collection_kind"] == "manifest"
    shared = [i for i in range(40) if mine.ids[i] in dataset.ids]
    assert shared  # the database holds most of the first 40 samples
    rows = [dataset.ids.index(mine.ids[i]) for i in shared]
    for modality in ("image", "text"):
        assert np.array_equal(mine.codes[modality].words[:, shared], dataset.codes[modality].words[:, rows])


def test_a_query_of_unknown_words_gets_a_message_not_a_ranking(demo, capsys):
    with pytest.raises(OutOfVocabularyError, match="none of the words .* vocabulary"):
        search(demo["index"], text="zebra xylophone")
    with pytest.raises(SystemExit) as stop:
        main(["search", str(demo["index"]), "--text", "zebra xylophone"])
    assert stop.value.code != 0
    assert "none of the words of the text query 'zebra xylophone'" in capsys.readouterr().err
    # known words count; the unknown ones are reported
    result = search(demo["index"], text="zebra circle", k=3)
    assert result.unknown_words == ["zebra"] and len(result.hits) == 3


def test_a_missing_image_query_is_named(demo):
    with pytest.raises(SearchError, match="nowhere.png"):
        search(demo["index"], image="nowhere.png")


@pytest.fixture(scope="module")
def strangers(demo):
    """Models that do not belong with the demo index: other bits, dataset, encoder."""
    root = demo["root"]
    files = {k: demo[k] for k in ("pairs", "features", "graph")}
    other_dataset = prepare_dataset(root, "other", "other")
    # the tiny CLIP with other weights, given as a checkpoint file
    clip, _, _ = load_clip("egath-tiny-vit", None)
    with torch.no_grad():
        for p in clip.parameters():
            p.add_(0.01)
    torch.save(clip.state_dict(), root / "tiny-other.pt")
    other_encoder = prepare_dataset(root, "encoder", "demo", pretrained=str(root / "tiny-other.pt"))
    return {
        "bits": train_model(files, root / "bits8.pt", 8, TINY),
        "dataset": train_model(other_dataset, root / "other.pt", BITS, TINY),
        "encoder": train_model(other_encoder, root / "encoder.pt", BITS, TINY),
        "weights": train_model(files, root / "retrained.pt", BITS, TINY),
        "encoder_files": other_encoder,
    }


@pytest.mark.parametrize("what, message", [
    ("bits", "bits: model 8, index 32"),
    ("dataset", "dataset: model other, index demo"),
    ("encoder", "encoder: model egath-tiny-vit (/*/tiny-other.pt), index egath-tiny-vit (none)"),
    ("weights", "weights: sha256 differs"),
])
def test_a_model_that_did_not_build_the_index_is_refused(demo, strangers, what, message):
    with pytest.raises(SearchError) as refused:
        search(demo["index"], text="circle", model=strangers[what])
    assert fnmatch.fnmatch(str(refused.value), f"*{message}*"), str(refused.value)


def test_an_index_is_not_built_from_files_the_model_does_not_belong_with(demo, strangers, tmp_path, capsys):
    with pytest.raises(ValueError, match="other.pt does not belong with .*pairs.h5: dataset: other in .*other.pt, demo in"):
        build_index(strangers["dataset"], tmp_path / "a.h5", pairs=demo["pairs"], features=demo["features"])
    with pytest.raises(SystemExit) as stop:
        main(["index", str(demo["model"]), str(tmp_path / "b.h5"), "--collection", str(demo["pairs"]),
              "--features", str(strangers["encoder_files"]["features"]), "--device", "cpu"])
    assert stop.value.code != 0
    assert fnmatch.fnmatch(capsys.readouterr().err, "*encoder: egath-tiny-vit (none) in */model.pt, "
                                                    "egath-tiny-vit (*tiny-other.pt) in */features.h5*")
    assert not (tmp_path / "a.h5").exists() and not (tmp_path / "b.h5").exists()


def test_retrieval_examples_draw_the_seeded_queries_and_their_ranked_results(demo, tmp_path):
    from egath.encoding import encode_dataset
    from egath.examples import retrieval_examples

    codes = encode_dataset(demo["model"], demo["pairs"], demo["features"], tmp_path / "codes.h5")
    png, pdf = tmp_path / "examples.png", tmp_path / "examples.pdf"
    shown = retrieval_examples(codes, demo["pairs"], png, pdf, n_text=2, n_image=2, seed=3)
    with h5py.File(codes) as c, h5py.File(demo["pairs"]) as p:
        query_rows, database_rows = p["split/query"][()], p["split/database"][()]
        labels, ids = p["labels"][()], p["ids"].asstr()[()]
        picks = np.random.default_rng(3).choice(len(query_rows), 4, replace=False)
        for queries, (q_modality, d_modality, k) in ((shown["text_queries"], ("text", "image", 10)),
                                                      (shown["image_queries"], ("image", "text", 5))):
            assert len(queries) == 2
            for query in queries:
                q = int(np.flatnonzero(query_rows == query["row"])[0])
                assert q in picks
                distances = (c[f"query/{q_modality}"][q] != c[f"database/{d_modality}"][()]).sum(axis=1)
                order = np.argsort(distances, kind="stable")[:k]
                assert query["ranked_rows"] == database_rows[order].tolist()
                assert query["ranked_ids"] == ids[database_rows[order]].tolist()
                assert query["distances"] == distances[order].tolist()
                assert query["relevant"] == [bool(labels[r] @ labels[query["row"]]) for r in database_rows[order]]
    assert {q["row"] for q in shown["text_queries"] + shown["image_queries"]} == set(query_rows[picks].tolist())
    # relevance is not all one way, so both marks are drawn
    flags = [f for q in shown["text_queries"] + shown["image_queries"] for f in q["relevant"]]
    assert any(flags) and not all(flags)
    from PIL import Image
    with Image.open(png) as im:
        assert im.size[0] > 1000 and im.size[1] > 500
    assert pdf.read_bytes().startswith(b"%PDF")


def test_retrieval_examples_refuse_codes_of_another_pairs_file(demo, tmp_path):
    from egath.encoding import encode_dataset
    from egath.examples import retrieval_examples

    codes = encode_dataset(demo["model"], demo["pairs"], demo["features"], tmp_path / "codes.h5")
    other = tmp_path / "pairs.h5"
    build_pairs(demo["root"] / "data" / "manifest.tsv", other, "demo", 60, 75, 300, 1)  # another split
    with pytest.raises(ValueError, match="does not hold the query set"):
        retrieval_examples(codes, other, tmp_path / "a.png", tmp_path / "a.pdf")
    assert not (tmp_path / "a.png").exists()


def test_a_model_on_clip_text_features_encodes_text_queries_with_clip(demo, tmp_path):
    files = {k: demo[k] for k in ("pairs", "features", "graph")}
    model = tmp_path / "cliptext.pt"
    train(files["pairs"], files["features"], files["graph"], model, "egath-cliptext", BITS, TINY,
          spec={"model": "egath", "text": "clip"})
    index = load_index(build_index(model, tmp_path / "index.h5", **{k: files[k] for k in ("pairs", "features")}))
    assert index.meta["text_input"] == "clip" and index.vocabulary == []
    # CLIP's tokenizer takes any words: no vocabulary, so no out-of-vocabulary refusal
    result = search(index, text="zebra xylophone", k=4)
    assert len(result.hits) == 4 and result.unknown_words == []
    # the text of an indexed pair, encoded again through CLIP, finds its own code first
    hit = search(index, text=index.texts[5], k=1, same_modality=True).hits[0]
    assert hit.distance == 0


def test_pairs_skipped_at_extraction_are_left_out_of_the_index(demo, tmp_path):
    # a copy of the features with two database images marked unreadable (clip.unreadable_images: skip)
    features = tmp_path / "features.h5"
    shutil.copyfile(demo["features"], features)
    with h5py.File(demo["pairs"]) as f:
        database = f["split/database"][:]
        ids = [i.decode() for i in f["ids"][:]]
    with h5py.File(features, "a") as f:
        skipped = np.zeros(f["image"].shape[0], np.uint8)
        skipped[database[[3, 7]]] = 1
        if "image_skipped" in f:
            del f["image_skipped"]
        f.create_dataset("image_skipped", data=skipped)
    index = build_index(demo["model"], tmp_path / "index.h5", pairs=demo["pairs"], features=features)
    loaded = load_index(index)
    with h5py.File(index) as f:
        assert len(f["ids"]) == len(f["labels"]) == len(f["codes/image"]) == len(database) - 2
        kept = [i.decode() for i in f["ids"][:]]
    assert kept == [ids[r] for r in database if r not in database[[3, 7]]]
    assert loaded.meta["n"] == len(database) - 2


# --------------------------------------------------------------------------- collections

def _database_rows(demo, count):
    """(pairs row, id, image path, text) of the first `count` items of the demo's database."""
    with h5py.File(demo["pairs"]) as f:
        rows = f["split/database"][:count]
        ids, paths, texts = (f[key].asstr()[()] for key in ("ids", "image_paths", "texts"))
    return [(int(r), ids[r], paths[r], texts[r]) for r in rows]


def _index_cli(demo, collection, out, *extra):
    main(["index", str(demo["model"]), str(out), "--collection", str(collection), "--pairs", str(demo["pairs"]),
          "--features", str(demo["features"]), "--device", "cpu", "--num-workers", "0", *extra])
    return load_index(out)


def _photo_folder(demo, folder, count=24):
    """A folder of the first database images in two levels of subfolders, a text file beside
    them; {relative path: pairs id}."""
    ids = {}
    for i, (_, sample_id, path, _) in enumerate(_database_rows(demo, count)):
        relative = f"{'ab'[i % 2]}/{'deep/' if i % 3 == 0 else ''}{sample_id}.png"
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / relative)
        ids[relative] = sample_id
    (folder / "a" / "notes.txt").write_text("not an image\n")
    return ids


def test_a_folder_of_images_is_indexed_and_searched_by_text_and_by_image(demo, tmp_path):
    photos = tmp_path / "photos"
    ids = _photo_folder(demo, photos)
    mine, dataset = _index_cli(demo, photos, tmp_path / "index.h5"), load_index(demo["index"])
    assert mine.modalities == ("image",) and mine.meta["collection_kind"] == "folder"
    assert sorted(mine.ids) == sorted(ids) and mine.label_names == []
    # each image encodes as it does in the dataset's index: same CLIP, same model
    rows = [dataset.ids.index(ids[i]) for i in mine.ids]
    assert np.array_equal(mine.codes["image"].words, dataset.codes["image"].words[:, rows])
    by_text = search(mine, text="circle star", k=5)
    assert by_text.searched == "image" and len(by_text.hits) == 5
    # an image query ranks the folder's images (there are no texts), itself first
    path = photos / mine.ids[3]
    by_image = search(mine, image=path, k=3)
    assert by_image.searched == "image" and by_image.hits[0].distance == 0
    assert by_image.hits[0].image == str(path)


def test_an_unreadable_image_of_a_folder_stops_the_index_or_is_skipped_and_named(demo, tmp_path, capsys):
    photos = tmp_path / "photos"
    ids = _photo_folder(demo, photos, count=10)
    (photos / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not the rest of a PNG")
    with pytest.raises(SystemExit) as stop:
        _index_cli(demo, photos, tmp_path / "a.h5")
    err = capsys.readouterr().err
    assert stop.value.code != 0 and "broken.png" in err and "--unreadable-images skip" in err
    assert not (tmp_path / "a.h5").exists()
    index = _index_cli(demo, photos, tmp_path / "b.h5", "--unreadable-images", "skip")
    assert sorted(index.ids) == sorted(ids)
    assert "1 of 11 images could not be read" in capsys.readouterr().err


def test_a_caption_file_is_indexed_as_texts(demo, tmp_path):
    items = _database_rows(demo, 30)
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(text for *_, text in items[:10]) + "\n\n"
                        + "\n".join(text for *_, text in items[10:]) + "\n")
    mine, dataset = _index_cli(demo, captions, tmp_path / "index.h5"), load_index(demo["index"])
    assert mine.modalities == ("text",) and mine.meta["collection_kind"] == "caption file"
    assert mine.texts == [text for *_, text in items]
    assert mine.ids[:11] == [f"captions.txt:{line}" for line in range(1, 11)] + ["captions.txt:12"]  # a blank line 11
    rows = [dataset.ids.index(sample_id) for _, sample_id, _, _ in items]
    assert np.array_equal(mine.codes["text"].words, dataset.codes["text"].words[:, rows])
    # an image ranks the captions; a text ranks the captions too (there are no images)
    by_image = search(mine, image=items[4][2], k=3)
    assert by_image.searched == "text" and by_image.hits[0].text in mine.texts
    by_text = search(mine, text=items[7][3], k=1)
    assert by_text.searched == "text" and by_text.hits[0].distance == 0


def test_an_unreadable_image_of_a_manifest_is_named_by_its_line_with_the_option_that_skips_it(demo, tmp_path, capsys):
    data = demo["root"] / "data"
    lines = (data / "manifest.tsv").read_text().splitlines()[:13]
    (tmp_path / "images").mkdir()
    for line in lines[1:]:
        image = line.split("\t")[1]
        shutil.copy(data / image, tmp_path / image)
    broken = lines[6].split("\t")[1]  # line 7 of the manifest
    (tmp_path / broken).write_bytes(b"GIF89a broken")
    (tmp_path / "manifest.tsv").write_text("\n".join(lines) + "\n")
    shutil.copy(data / "labels.txt", tmp_path / "labels.txt")
    with pytest.raises(SystemExit):
        _index_cli(demo, tmp_path / "manifest.tsv", tmp_path / "a.h5")
    err = capsys.readouterr().err
    assert f"{tmp_path / 'manifest.tsv'}:7, id {lines[6].split(chr(9))[0]!r}" in err
    assert "--unreadable-images skip" in err and ".egath-index-" not in err
    index = _index_cli(demo, tmp_path / "manifest.tsv", tmp_path / "b.h5", "--unreadable-images", "skip")
    assert len(index) == 11 and lines[6].split("\t")[0] not in index.ids


def test_features_take_the_unreadable_images_option(demo, tmp_path):
    data = demo["root"] / "data"
    lines = (data / "manifest.tsv").read_text().splitlines()[:21]
    (tmp_path / "images").mkdir()
    for line in lines[1:]:
        shutil.copy(data / line.split("\t")[1], tmp_path / line.split("\t")[1])
    (tmp_path / lines[4].split("\t")[1]).write_bytes(b"not an image")  # line 5 of the manifest, row 3
    (tmp_path / "manifest.tsv").write_text("\n".join(lines) + "\n")
    shutil.copy(data / "labels.txt", tmp_path / "labels.txt")
    build_pairs(tmp_path / "manifest.tsv", tmp_path / "pairs.h5", "mini", 20, 5, 10, 0)
    main(["features", str(tmp_path / "pairs.h5"), str(tmp_path / "features.h5"), "--model", "egath-tiny-vit",
          "--pretrained", "none", "--num-workers", "0", "--device", "cpu", "--unreadable-images", "skip"])
    with h5py.File(tmp_path / "features.h5") as f:
        assert np.flatnonzero(f["image_skipped"][()]).tolist() == [3]
        assert f.attrs["unreadable_images"] == "skip"


# --------------------------------------------------------------------------- queries

def test_an_item_of_the_index_as_the_query_is_its_stored_code(demo):
    index = load_index(demo["index"])
    by_item = search(index, item=("image", 12), k=8)
    by_file = search(index, image=index.image_paths[12], k=8)
    assert by_item.code == by_file.code
    assert [(h.row, h.distance) for h in by_item.hits] == [(h.row, h.distance) for h in by_file.hits]
    assert all(hit.shares_label is None for hit in by_file.hits)  # an image file has no labels
    assert by_item.query_labels == index.item_labels(12)
    assert all(hit.shares_label == bool(set(hit.labels) & set(by_item.query_labels)) for hit in by_item.hits)
    with pytest.raises(SearchError, match="no image at row 5000"):
        search(index, item=("image", 5000))


def test_a_text_names_the_labels_it_holds(demo):
    result = search(demo["index"], text="a big Circle, red", k=5)
    assert result.query_labels == ["circle"]
    assert [hit.shares_label for hit in result.hits] == ["circle" in hit.labels for hit in result.hits]
    assert search(demo["index"], text="red round", k=2).query_labels == []


def test_many_queries_in_one_command_as_tsv_and_json(demo, tmp_path, capsys):
    index = load_index(demo["index"])
    queries = tmp_path / "queries.txt"
    queries.write_text(f"red circle\ntext\tblue star\n\nimage\t{index.image_paths[3]}\nzebra xylophone\n")
    with pytest.raises(SystemExit) as stop:
        main(["search", str(demo["index"]), "--queries", str(queries), "--k", "4"])
    out, err = capsys.readouterr()
    assert stop.value.code == 1  # one query of four failed, and is named
    assert f"{queries}:5: none of the words of the text query 'zebra xylophone'" in err
    rows = [line.split("\t") for line in out.splitlines()]
    assert rows[0] == ["line", "query", "rank", "distance", "id", "item"] and len(rows) == 1 + 3 * 4
    expected = [(1, "red circle", search(index, text="red circle", k=4)),
                (2, "blue star", search(index, text="blue star", k=4)),
                (4, index.image_paths[3], search(index, image=index.image_paths[3], k=4))]
    assert rows[1:] == [[str(line), query, str(hit.rank), str(hit.distance), hit.id,
                         hit.image if result.searched == "image" else hit.text]
                        for line, query, result in expected for hit in result.hits]
    with pytest.raises(SystemExit):
        main(["search", str(demo["index"]), "--queries", str(queries), "--k", "4", "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert [p["line"] for p in printed] == [1, 2, 4]
    assert printed[2]["hits"] == json.loads(json.dumps(expected[2][2].to_dict()))["hits"]


def test_a_queries_line_of_an_unknown_kind_is_named(demo, tmp_path, capsys):
    queries = tmp_path / "queries.txt"
    queries.write_text("circle\nvideo\tclip.mp4\n")
    with pytest.raises(SystemExit):
        main(["search", str(demo["index"]), "--queries", str(queries)])
    assert f"{queries}:2: a line is a text, or `text<TAB>words` or `image<TAB>path`, not 'video'" in capsys.readouterr().err


def _run_cli(*args):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-m", "egath.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_no_line_of_another_library_reaches_the_terminal_unless_verbose(demo):
    # an image query loads CLIP through open_clip, which logs INFO lines ("Loaded ... model config")
    image = load_index(demo["index"]).image_paths[0]
    quiet = _run_cli("search", str(demo["index"]), "--image", image, "--k", "3")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.splitlines()[0].startswith(f"image {image}: the 3 nearest texts")
    assert "INFO" not in quiet.stdout and quiet.stderr == ""
    verbose = _run_cli("search", str(demo["index"]), "--image", image, "--k", "3", "--verbose")
    assert "INFO" not in verbose.stdout  # log lines go to stderr, and there only with --verbose
    assert any(" INFO open_clip" in line or " INFO root" in line for line in verbose.stderr.splitlines())


@pytest.mark.parametrize("command", ["index", "search", "serve", "features"])
def test_every_option_says_what_it_does_and_its_default(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    options = text[text.index("options:"):]
    entries = re.split(r"\n  (?=-)", options)[1:]
    assert len(entries) >= 5
    for entry in entries:
        flag = entry.split()[0].rstrip(",")
        if flag in ("-h", "--help"):
            continue
        assert "(default:" in entry, f"egath {command} {flag} has no help text with its default: {entry!r}"


def test_an_empty_text_query_is_refused(demo, tmp_path):
    with pytest.raises(SearchError, match="holds no word"):
        search(demo["index"], text="  ")
    # a model on CLIP text features too, whose tokenizer would take an empty text silently
    model = tmp_path / "cliptext.pt"
    train(demo["pairs"], demo["features"], demo["graph"], model, "egath-cliptext", BITS, TINY,
          spec={"model": "egath", "text": "clip"})
    index = build_index(model, tmp_path / "index.h5", pairs=demo["pairs"], features=demo["features"])
    for empty in ("", " ", "--- ..."):
        with pytest.raises(SearchError, match="holds no word"):
            search(index, text=empty)


def test_a_truncated_index_says_to_build_it_again(demo, tmp_path):
    truncated = tmp_path / "index.h5"
    truncated.write_bytes(Path(demo["index"]).read_bytes()[:5000])
    with pytest.raises(OSError) as refused:
        load_index(truncated)
    assert "egath index" in str(refused.value) and "workflow" not in str(refused.value)


def test_an_index_of_an_older_format_is_refused_with_the_remedy(demo, tmp_path):
    old = tmp_path / "index.h5"
    shutil.copy(demo["index"], old)
    with h5py.File(old, "a") as f:
        f.attrs["format_version"] = 1
    with pytest.raises(SearchError, match="format version 2 .*version 1.*egath index"):
        load_index(old)


def test_the_index_needs_no_model_file_to_answer(demo, tmp_path):
    model, index = tmp_path / "model.pt", tmp_path / "index.h5"
    shutil.copy(demo["model"], model)
    build_index(model, index, pairs=demo["pairs"], features=demo["features"])
    expected = search(index, text="blue star", k=5)
    model.unlink()
    assert search(index, text="blue star", k=5) == expected


@pytest.mark.parametrize("collection", ["photos", "captions.txt", "manifest.tsv"])
def test_a_collection_other_than_a_pairs_h5_needs_the_models_pairs(tmp_path, capsys, collection):
    (tmp_path / "photos").mkdir()
    with pytest.raises(SystemExit):
        main(["index", str(tmp_path / "model.pt"), str(tmp_path / "index.h5"), "--collection",
              str(tmp_path / collection), "--features", str(tmp_path / "features.h5")])
    assert "needs --pairs" in capsys.readouterr().err and not (tmp_path / "index.h5").exists()
