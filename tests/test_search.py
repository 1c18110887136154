"""Searching a collection by text or image with a trained model (egath.search, `egath index`,
`egath search`), on a small synthetic dataset with the tiny random-weights CLIP."""
import fnmatch
import json
import shutil

import h5py
import numpy as np
import pytest
import torch

from egath.cli import main
from egath.datasets import build_pairs, make_synthetic_dataset
from egath.datasets.synthetic import KINDS
from egath.features import extract_features, load_clip
from egath.graph import build_graph, clip_label_embeddings
from egath.search import OutOfVocabularyError, SearchError, build_index, load_index, search
from egath.training import train

BITS = 32
# Small widths and few epochs: enough to land far above chance on this data in seconds.
SMALL = dict(epochs=25, lr=1e-3, lr_min=1e-4, d_model=128, ff_dim=256, feature_dim=128,
             gat_hidden=128, selection="last")
TINY = dict(SMALL, epochs=1, d_model=16, ff_dim=16, feature_dim=16, gat_hidden=16)


def _dataset(root, folder, dataset, pretrained=None):
    """pairs.h5, features.h5 and graph.h5 of the synthetic manifest in root/data."""
    out = root / folder
    build_pairs(root / "data" / "manifest.tsv", out / "pairs.h5", dataset, 60, 75, 300, 0)
    extract_features(out / "pairs.h5", out / "features.h5", "egath-tiny-vit", pretrained, 128, 0,
                     "cpu", progress=False)
    build_graph(out / "pairs.h5", out / "graph.h5", 0.3, *clip_label_embeddings(out / "features.h5"))
    return {key: out / f"{key}.h5" for key in ("pairs", "features", "graph")}


def _train(files, out, bits, params):
    train(files["pairs"], files["features"], files["graph"], out, "egath", bits, params)
    return out


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    make_synthetic_dataset(root / "data", 600, 0, 64)
    files = _dataset(root, "demo", "demo")
    model = _train(files, root / "model.pt", BITS, SMALL)
    index = build_index(model, root / "index.h5", pairs=files["pairs"], features=files["features"])
    return {"root": root, "model": model, "index": index, **files}


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
    other_dataset = _dataset(root, "other", "other")
    # the tiny CLIP with other weights, given as a checkpoint file
    clip, _, _ = load_clip("egath-tiny-vit", None)
    with torch.no_grad():
        for p in clip.parameters():
            p.add_(0.01)
    torch.save(clip.state_dict(), root / "tiny-other.pt")
    other_encoder = _dataset(root, "encoder", "demo", pretrained=str(root / "tiny-other.pt"))
    return {
        "bits": _train(files, root / "bits8.pt", 8, TINY),
        "dataset": _train(other_dataset, root / "other.pt", BITS, TINY),
        "encoder": _train(other_encoder, root / "encoder.pt", BITS, TINY),
        "weights": _train(files, root / "retrained.pt", BITS, TINY),
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
