"""Files that do not belong together are refused, naming both files and what differs
(egath.lineage), and NaN or inf in loaded features is named by file and row."""
import shutil

import h5py
import numpy as np
import pytest

from egath import training
from egath.encoding import encode_dataset
from egath.graph import build_graph, clip_label_embeddings
from egath.lineage import MismatchError
from separable import BITS, N

PARAMS = dict(epochs=1, batch_size=32, d_model=8, ff_dim=8, feature_dim=8, gat_hidden=8, seed=0)


def train(files, out, **changed):
    paths = {**files, **changed}
    return training.train(paths["pairs"], paths["features"], paths["graph"], out, "egath", BITS,
                          dict(PARAMS), dataset=changed.get("dataset", "separable"))


@pytest.fixture(scope="module")
def model(separable_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "model.pt"
    train(separable_files, out)
    return out


def variant(source, path, attrs=None, datasets=None):
    """A copy of an HDF5 file with some attributes and datasets replaced."""
    shutil.copyfile(source, path)
    with h5py.File(path, "r+") as f:
        f.attrs.update(attrs or {})
        for key, value in (datasets or {}).items():
            if key in f:
                del f[key]
            f.create_dataset(key, data=value)
    return path


def other_split(pairs, path):
    """The same pairs with another query/train draw of the same sizes (another split_seed)."""
    with h5py.File(pairs) as f:
        n_query, n_train = len(f["split/query"]), len(f["split/train"])
    order = np.random.default_rng(99).permutation(N)
    query, train_rows = np.sort(order[:n_query]), np.sort(order[n_query:n_query + n_train])
    return variant(pairs, path, {"split_seed": 99}, {
        "split/query": query, "split/train": train_rows,
        "split/database": np.setdiff1d(np.arange(N), query)})


def test_a_model_of_another_dataset_is_refused_and_nothing_written(separable_files, model, tmp_path):
    # the same vocabulary size and rows: only the dataset name differs
    pairs = variant(separable_files["pairs"], tmp_path / "pairs.h5", {"dataset": "other"})
    out = tmp_path / "codes.h5"
    with pytest.raises(MismatchError) as e:
        encode_dataset(model, pairs, separable_files["features"], out)
    msg = str(e.value)
    assert str(model) in msg and str(pairs) in msg
    assert "dataset" in msg and "separable" in msg and "other" in msg
    assert not out.exists()


def test_a_model_of_another_split_is_refused(separable_files, model, tmp_path):
    pairs = other_split(separable_files["pairs"], tmp_path / "pairs.h5")
    with pytest.raises(MismatchError, match="split_sha256"):
        encode_dataset(model, pairs, separable_files["features"], tmp_path / "codes.h5")


def test_a_model_of_another_label_set_is_refused(separable_files, model, tmp_path):
    with h5py.File(separable_files["pairs"]) as f:
        names = [s + "x" for s in f["label_names"].asstr()[()]]
    pairs = variant(separable_files["pairs"], tmp_path / "pairs.h5",
                    datasets={"label_names": np.array(names, dtype=object)})
    with pytest.raises(MismatchError, match="labels_sha256"):
        encode_dataset(model, pairs, separable_files["features"], tmp_path / "codes.h5")


def test_features_of_another_encoder_are_refused(separable_files, model, tmp_path):
    features = variant(separable_files["features"], tmp_path / "features.h5", {"model": "ViT-B-32"})
    with pytest.raises(MismatchError) as e:
        encode_dataset(model, separable_files["pairs"], features, tmp_path / "codes.h5")
    assert "encoder" in str(e.value) and "ViT-B-32" in str(e.value) and str(features) in str(e.value)


def test_features_of_other_pairs_are_refused(separable_files, tmp_path):
    features = variant(separable_files["features"], tmp_path / "features.h5",
                       {"source_sha256": "0" * 64, "dataset": "separable"})
    with pytest.raises(MismatchError) as e:
        train(separable_files, tmp_path / "model.pt", features=features)
    assert "source_sha256" in str(e.value) and str(separable_files["pairs"]) in str(e.value)
    assert not (tmp_path / "model.pt").exists()


def test_a_graph_of_another_split_is_refused(separable_files, tmp_path):
    pairs = other_split(separable_files["pairs"], tmp_path / "pairs.h5")
    graph = tmp_path / "graph.h5"
    build_graph(pairs, graph, 0.3, *clip_label_embeddings(separable_files["features"]))
    with pytest.raises(MismatchError) as e:
        train(separable_files, tmp_path / "model.pt", graph=graph)
    assert "split_sha256" in str(e.value) and str(graph) in str(e.value)


def test_training_for_one_dataset_on_pairs_of_another_is_refused(separable_files, tmp_path):
    with pytest.raises(MismatchError, match="'flickr'.*'separable'"):
        train(separable_files, tmp_path / "model.pt", dataset="flickr")


def poisoned(features, path, row, key="image"):
    with h5py.File(features) as f:
        values = f[key][()]
    values[row, 3] = np.nan if row % 2 else np.inf
    return variant(features, path, datasets={key: values})


def test_nan_in_a_training_row_is_named_before_training(separable_files, tmp_path):
    with h5py.File(separable_files["pairs"]) as f:
        row = int(f["split/train"][5])
    features = poisoned(separable_files["features"], tmp_path / "features.h5", row)
    with pytest.raises(ValueError) as e:
        train(separable_files, tmp_path / "model.pt", features=features)
    msg = str(e.value)
    assert f"{features}: image holds NaN or inf in 1 row(s): {row} (id 's{row:04d}')" in msg
    assert not (tmp_path / "model.pt").exists()


def test_nan_in_a_query_row_is_named_not_coded(separable_files, model, tmp_path):
    with h5py.File(separable_files["pairs"]) as f:
        row = int(f["split/query"][2])
    features = poisoned(separable_files["features"], tmp_path / "features.h5", row, key="text")
    # the text features are the input of a method with text: clip only
    result = training.train(separable_files["pairs"], separable_files["features"], separable_files["graph"],
                            tmp_path / "itq.pt", "itq", BITS, dict(PARAMS), dataset="separable",
                            spec={"model": "itq", "text": "clip"})
    assert result["history"] == []
    with pytest.raises(ValueError, match=f"{features}: text holds NaN or inf in 1 row.*{row}"):
        encode_dataset(tmp_path / "itq.pt", separable_files["pairs"], features, tmp_path / "codes.h5")
    assert not (tmp_path / "codes.h5").exists()


def test_skipped_images_leave_their_pairs_out_of_every_split(separable_files, model, tmp_path):
    with h5py.File(separable_files["pairs"]) as f:
        query, train_rows = f["split/query"][()], f["split/train"][()]
    skipped = np.zeros(N, np.uint8)
    skipped[[query[0], train_rows[1], train_rows[2]]] = 1
    features = variant(separable_files["features"], tmp_path / "features.h5",
                       datasets={"image_skipped": skipped})
    assert training.load_split(separable_files["pairs"], features, "train").labels.shape[0] == len(train_rows) - 2
    codes = encode_dataset(model, separable_files["pairs"], features, tmp_path / "codes.h5")
    with h5py.File(codes) as f:
        assert f["query/image"].shape[0] == len(query) - 1
        assert f["database/image"].shape[0] == N - len(query) - 2


def test_a_loss_that_diverges_names_the_run(separable_files, tmp_path, monkeypatch):
    from egath.methods import egath as egath_method
    real = egath_method.egath_loss

    def diverging(*args, **kwargs):
        terms = real(*args, **kwargs)
        return {**terms, "total": terms["total"] * float("inf")}

    monkeypatch.setattr(egath_method, "egath_loss", diverging)
    with pytest.raises(FloatingPointError) as e:
        train(separable_files, tmp_path / "model.pt")
    assert "separable egath 8 bits seed 0, epoch 1" in str(e.value) and "diverged" in str(e.value)


def test_a_truncated_model_file_is_named(separable_files, model, tmp_path):
    cut = tmp_path / "model.pt"
    cut.write_bytes(model.read_bytes()[:1000])
    with pytest.raises(ValueError, match=f"{cut}: not a readable model file.*Delete it"):
        encode_dataset(cut, separable_files["pairs"], separable_files["features"], tmp_path / "codes.h5")


@pytest.mark.parametrize("split, change, message", [
    ("train", lambda rows: np.append(rows[:-1], 10_000), r"split/train holds rows outside 0\.\.119"),
    ("train", lambda rows: rows[::-1].copy(), "split/train is not sorted, or repeats rows"),
    ("query", lambda rows: np.sort(np.append(rows[:-1], min(set(range(N)) - set(rows)))),
     "split/query and split/database share rows"),
])
def test_a_damaged_split_is_named_by_every_stage(separable_files, tmp_path, split, change, message):
    with h5py.File(separable_files["pairs"]) as f:
        rows = f[f"split/{split}"][()]
    pairs = variant(separable_files["pairs"], tmp_path / "pairs.h5", datasets={f"split/{split}": change(rows)})
    with pytest.raises(ValueError, match=f"{pairs}: ({message})"):
        build_graph(pairs, tmp_path / "graph.h5", 0.3, *clip_label_embeddings(separable_files["features"]))
    with pytest.raises(ValueError, match=message):
        train(separable_files, tmp_path / "model.pt", pairs=pairs)
    assert not (tmp_path / "graph.h5").exists() and not (tmp_path / "model.pt").exists()


def test_training_rows_outside_the_database_are_named_by_every_stage(separable_files, tmp_path):
    """A training set that holds a query row would train on a query: refused."""
    with h5py.File(separable_files["pairs"]) as f:
        query, train_rows = f["split/query"][()], f["split/train"][()]
    leaked = np.sort(np.append(train_rows[1:], query[0]))
    pairs = variant(separable_files["pairs"], tmp_path / "pairs.h5", datasets={"split/train": leaked})
    message = f"{pairs}: split/train holds rows that are not in split/database"
    with pytest.raises(ValueError, match=message):
        build_graph(pairs, tmp_path / "graph.h5", 0.3, *clip_label_embeddings(separable_files["features"]))
    with pytest.raises(ValueError, match=message):
        train(separable_files, tmp_path / "model.pt", pairs=pairs)
    assert not (tmp_path / "graph.h5").exists() and not (tmp_path / "model.pt").exists()


@pytest.mark.parametrize("change, message", [
    (lambda a: np.zeros_like(a), "ones on the diagonal"),
    (lambda a: a * 2, "must hold 0 or 1"),
    (lambda a: a[:-1, :-1], "do not fit its 4 label names"),
])
def test_a_damaged_graph_is_named(separable_files, tmp_path, change, message):
    with h5py.File(separable_files["graph"]) as f:
        adjacency = f["adjacency"][()]
    graph = variant(separable_files["graph"], tmp_path / "graph.h5", datasets={"adjacency": change(adjacency)})
    with pytest.raises(ValueError, match=f"{graph}: .*{message}"):
        train(separable_files, tmp_path / "model.pt", graph=graph)
