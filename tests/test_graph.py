"""Tests for egath.graph: label co-occurrence, conditional probabilities, thresholded adjacency,
and graph.h5 built from the training rows of pairs.h5."""

import h5py
import numpy as np
import pytest

import h5files

from egath.graph import (build_graph, clip_label_embeddings, cooccurrence_graph, glove_label_embeddings,
                         load_graph, read_label_names)

# 5 samples x 3 labels; label 2 never occurs
LABELS = np.array([[1, 1, 0],
                   [1, 0, 0],
                   [1, 1, 0],
                   [0, 1, 0],
                   [1, 0, 0]], np.uint8)
# C = L^T L: N_0 = 4 (rows 0,1,2,4), N_1 = 3 (rows 0,2,3), both in rows 0 and 2 -> C_01 = 2
COUNTS = np.array([[4, 2, 0],
                   [2, 3, 0],
                   [0, 0, 0]])
# D_ij = C_ij / N_i: row 0 / 4, row 1 / 3, row 2 all zero (N_2 = 0)
CONDITIONAL = np.array([[1.0, 0.5, 0.0],
                        [2 / 3, 1.0, 0.0],
                        [0.0, 0.0, 0.0]])


def build_graph_from_clip(pairs, features, out, threshold):
    return build_graph(pairs, out, threshold, *clip_label_embeddings(features))


def test_counts_and_conditional():
    counts, conditional, _ = cooccurrence_graph(LABELS, 0.5)
    np.testing.assert_array_equal(counts, COUNTS)
    assert counts.dtype == np.int64
    np.testing.assert_allclose(conditional, CONDITIONAL, rtol=0, atol=1e-15)
    assert conditional.dtype == np.float64
    assert np.all(np.isfinite(conditional))  # no 0/0 NaN for the label that never occurs


def test_counts_match_brute_force_on_random_labels():
    rng = np.random.default_rng(0)
    labels = (rng.random((30, 6)) < 0.3).astype(np.uint8)
    counts, conditional, adjacency = cooccurrence_graph(labels, 0.4)
    for i in range(6):
        for j in range(6):
            c = sum(1 for row in labels if row[i] and row[j])
            n_i = int(labels[:, i].sum())
            assert counts[i, j] == c
            d = c / n_i if n_i else 0.0
            assert conditional[i, j] == pytest.approx(d, abs=1e-15)
            assert adjacency[i, j] == (1 if i == j or d >= 0.4 else 0)


@pytest.mark.parametrize("threshold,expected", [
    # D_01 = 0.5 == threshold -> edge 0->1; D_10 = 2/3 >= 0.5 -> edge 1->0
    (0.5, [[1, 1, 0], [1, 1, 0], [0, 0, 1]]),
    # D_01 = 0.5 < 0.6 -> no edge; D_10 = 2/3 >= 0.6 -> edge (the graph is directed)
    (0.6, [[1, 0, 0], [1, 1, 0], [0, 0, 1]]),
    # 2/3 == threshold exactly (same float) -> edge
    (2 / 3, [[1, 0, 0], [1, 1, 0], [0, 0, 1]]),
    # only self-loops
    (0.7, [[1, 0, 0], [0, 1, 0], [0, 0, 1]]),
    (1.0, [[1, 0, 0], [0, 1, 0], [0, 0, 1]]),
])
def test_adjacency_at_threshold(threshold, expected):
    _, _, adjacency = cooccurrence_graph(LABELS, threshold)
    np.testing.assert_array_equal(adjacency, np.array(expected))
    assert adjacency.dtype == np.uint8
    # self-loop even for label 2, whose D_22 = 0 < threshold
    assert adjacency[2, 2] == 1


# --------------------------------------------------------------------------- build_graph

NAMES = ["a", "b", "c"]
# rows 0..4 are the training rows (the same as LABELS); rows 5..7 are queries that, counted,
# would give label 2 occurrences and add C_01 co-occurrences
ALL_LABELS = np.concatenate([LABELS, np.array([[0, 1, 1], [1, 1, 1], [1, 1, 1]], np.uint8)])
TRAIN = np.array([0, 1, 2, 3, 4])
QUERY = np.array([5, 6, 7])


def write_pairs(path, labels=ALL_LABELS, names=NAMES, train=TRAIN, query=QUERY):
    h5files.write_pairs(path, labels, query, train, label_names=names, dataset="hand")


def write_features(path, n_labels=3, dim=4, seed=0):
    label_text = np.random.default_rng(seed).standard_normal((n_labels, dim)).astype(np.float16)
    h5files.write_features(path, np.zeros((8, dim)), np.zeros((8, dim)), label_text)
    return label_text


def test_build_graph_uses_training_rows_only(tmp_path):
    write_pairs(tmp_path / "pairs.h5")
    label_text = write_features(tmp_path / "features.h5")
    out = tmp_path / "graph.h5"
    graph = build_graph_from_clip(tmp_path / "pairs.h5", tmp_path / "features.h5", out, 0.5)
    # with all 8 rows the counts would be N = (6, 6, 3), C_01 = 4: not what we expect
    assert not np.array_equal(ALL_LABELS.astype(np.int64).T @ ALL_LABELS, COUNTS)
    np.testing.assert_array_equal(graph.cooccurrence, COUNTS)
    np.testing.assert_allclose(graph.conditional, CONDITIONAL, atol=1e-15)
    np.testing.assert_array_equal(graph.adjacency, [[1, 1, 0], [1, 1, 0], [0, 0, 1]])
    np.testing.assert_array_equal(graph.node_features, label_text.astype(np.float32))
    assert graph.node_features.dtype == np.float32
    assert graph.label_names == NAMES

    with h5py.File(out, "r") as f:
        assert f["cooccurrence"].dtype == np.int64 and f["cooccurrence"].shape == (3, 3)
        assert f["conditional"].dtype == np.float64
        assert f["adjacency"].dtype == np.uint8
        assert f["node_features"].dtype == np.float32 and f["node_features"].shape == (3, 4)
        np.testing.assert_array_equal(f["cooccurrence"][:], COUNTS)
        np.testing.assert_array_equal(f["node_features"][:], label_text.astype(np.float32))
        assert [v.decode() for v in f["label_names"][:]] == NAMES
        assert f.attrs["threshold"] == 0.5
        assert "tiny" in f.attrs["node_features_source"]
    again = load_graph(out)
    np.testing.assert_array_equal(again.adjacency, graph.adjacency)
    np.testing.assert_array_equal(again.conditional, graph.conditional)
    assert again.label_names == NAMES


def test_build_graph_train_subset_not_prefix(tmp_path):
    # training rows scattered through the file: rows 1, 3, 6 -> labels (1,0,0), (0,1,0), (1,1,1)
    write_pairs(tmp_path / "pairs.h5", train=np.array([6, 1, 3]), query=np.array([0, 2]))
    write_features(tmp_path / "features.h5")
    graph = build_graph_from_clip(tmp_path / "pairs.h5", tmp_path / "features.h5", tmp_path / "g.h5", 0.5)
    # N = (2, 2, 1); C_01 = C_02 = C_12 = 1 (row 6 only)
    np.testing.assert_array_equal(graph.cooccurrence, [[2, 1, 1], [1, 2, 1], [1, 1, 1]])
    # D: row 0 = (1, .5, .5), row 1 = (.5, 1, .5), row 2 = (1, 1, 1)
    np.testing.assert_allclose(graph.conditional, [[1, .5, .5], [.5, 1, .5], [1, 1, 1]])
    np.testing.assert_array_equal(graph.adjacency, np.ones((3, 3)))


def test_build_graph_label_count_mismatch(tmp_path):
    write_pairs(tmp_path / "pairs.h5")
    write_features(tmp_path / "features.h5", n_labels=4)
    out = tmp_path / "out" / "graph.h5"
    with pytest.raises(ValueError) as info:
        build_graph_from_clip(tmp_path / "pairs.h5", tmp_path / "features.h5", out, 0.5)
    message = str(info.value)
    assert str(tmp_path / "features.h5") in message
    assert "4" in message and "3" in message
    assert not out.exists()


@pytest.mark.parametrize("threshold", [0.0, -0.1, 1.01, 2.0, float("nan")])
def test_build_graph_threshold_out_of_range(tmp_path, threshold):
    write_pairs(tmp_path / "pairs.h5")
    write_features(tmp_path / "features.h5")
    with pytest.raises(ValueError, match="threshold"):
        build_graph_from_clip(tmp_path / "pairs.h5", tmp_path / "features.h5", tmp_path / "g.h5", threshold)
    assert not (tmp_path / "g.h5").exists()


def test_build_graph_missing_features_dataset(tmp_path):
    write_pairs(tmp_path / "pairs.h5")
    with h5py.File(tmp_path / "features.h5", "w") as f:
        f.create_dataset("image", data=np.zeros((8, 4), np.float16))
    with pytest.raises(KeyError, match="label_text"):
        build_graph_from_clip(tmp_path / "pairs.h5", tmp_path / "features.h5", tmp_path / "g.h5", 0.5)


# --------------------------------------------------------------------------- GloVe node features

GLOVE = """the 0.5 0.5 0.5
plant 1.0 2.0 3.0
life 3.0 2.0 1.0
sky -1.0 0.0 1.5
plant 9.0 9.0 9.0
"""


def test_glove_label_embeddings_average_the_words_of_a_label(tmp_path):
    path = tmp_path / "glove.txt"
    path.write_text(GLOVE)
    vectors, source = glove_label_embeddings(path, ["plant_life", "Sky"])
    # plant_life = mean((1, 2, 3), (3, 2, 1)) = (2, 2, 2); the later duplicate "plant" is ignored
    np.testing.assert_array_equal(vectors, [[2.0, 2.0, 2.0], [-1.0, 0.0, 1.5]])
    assert vectors.dtype == np.float32 and "glove.txt" in source


def test_glove_label_without_any_vector_is_named(tmp_path):
    path = tmp_path / "glove.txt"
    path.write_text(GLOVE)
    with pytest.raises(ValueError, match=r"glove.txt: no vector for any word of label 'sea_water'"):
        glove_label_embeddings(path, ["sky", "sea_water"])


def test_glove_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "glove.txt"
    path.write_text("sky 1.0 zero 2.0\n")
    with pytest.raises(ValueError, match=r"glove.txt:1: not a GloVe vector line"):
        glove_label_embeddings(path, ["sky"])


def test_build_graph_with_glove_node_features(tmp_path):
    write_pairs(tmp_path / "pairs.h5", names=["the", "plant_life", "sky"])
    glove = tmp_path / "glove.txt"
    glove.write_text(GLOVE)
    vectors, source = glove_label_embeddings(glove, read_label_names(tmp_path / "pairs.h5"))
    graph = build_graph(tmp_path / "pairs.h5", tmp_path / "graph.h5", 0.5, vectors, source)
    np.testing.assert_array_equal(load_graph(tmp_path / "graph.h5").node_features[1], [2.0, 2.0, 2.0])
    assert graph.node_features.shape == (3, 3)
