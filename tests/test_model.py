"""Tests for EGATH's model (egath.methods.egath; encoders, GAT label classifier, hash heads), egath.training (train,
checkpoint and resume) and egath.encoding (codes.h5)."""

import math
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest
import torch

from egath import training
from egath.encoding import encode_dataset
from egath.graph import build_graph, clip_label_embeddings, load_graph
from egath.inputs import InputTransform, TransformedInputs
from egath.methods import egath as egath_method
from egath.methods.base import binarize
from egath.methods import model_from_checkpoint
from egath.methods.egath import ModelConfig, build_model
import separable
from separable import assert_resumes_like_an_uninterrupted_run, assert_same_state, interrupt_in_epoch
from h5files import permutation_split, write_features, write_pairs


def build_graph_from_clip(pairs, features, out, threshold):
    return build_graph(pairs, out, threshold, *clip_label_embeddings(features))


# --------------------------------------------------------------------------- GAT classifier

# Directed graph with self-loops: node i attends to j where A_ij = 1.
#   0 <- 1 (A_01 = 1, A_10 = 0), 2 <-> 3, 4 alone
ADJ = torch.tensor([[1, 1, 0, 0, 0],
                    [0, 1, 0, 0, 0],
                    [0, 0, 1, 1, 0],
                    [0, 0, 1, 1, 0],
                    [0, 0, 0, 0, 1]], dtype=torch.uint8)


def small_config(**overrides):
    cfg = dict(image_dim=6, text_dim=5, n_labels=5, node_dim=3, bits=8, d_model=8, ff_dim=8,
               feature_dim=4, gat_hidden=8, dropout=0.0)
    cfg.update(overrides)
    return ModelConfig(**cfg)


def small_model(**overrides):
    torch.manual_seed(0)
    node_features = torch.randn(5, 3)
    return build_model(small_config(**overrides), ADJ, node_features).eval()


def prototypes_after_change(model, node, delta=3.0):
    with torch.no_grad():
        before = model.classifier.prototypes().clone()
        model.classifier.node_features[node] += delta
        after = model.classifier.prototypes().clone()
        model.classifier.node_features[node] -= delta
    return before, after


def changed_rows(before, after):
    return {i for i in range(before.shape[0]) if not torch.allclose(before[i], after[i], atol=1e-7)}


def test_gat_neighbourhood():
    model = small_model()
    # node 1 is a neighbour of node 0 (A_01 = 1): changing g_1 changes P_0 and P_1 only
    assert changed_rows(*prototypes_after_change(model, 1)) == {0, 1}
    # node 0 is not a neighbour of node 1 (A_10 = 0): changing g_0 changes only P_0
    assert changed_rows(*prototypes_after_change(model, 0)) == {0}
    # 2 and 3 are neighbours of each other and of nobody else
    assert changed_rows(*prototypes_after_change(model, 2)) == {2, 3}
    assert changed_rows(*prototypes_after_change(model, 3)) == {2, 3}
    # an isolated node (self-loop only) affects itself only
    assert changed_rows(*prototypes_after_change(model, 4)) == {4}


def test_gat_edges_follow_adjacency():
    model = small_model()
    source, target = model.classifier.edge_index
    # messages go from j to i for each A_ij = 1
    assert {(int(t), int(s)) for s, t in zip(source, target)} == {tuple(x) for x in ADJ.nonzero().tolist()}


def test_output_shapes_and_ranges():
    model = small_model()
    image, text = torch.randn(7, 6), torch.rand(7, 5)
    out = model(image, text)
    assert set(out) == {"h_image", "h_text", "label_logits"}
    assert out["h_image"].shape == (7, 8) and out["h_text"].shape == (7, 8)
    assert out["label_logits"].shape == (7, 5)
    assert out["h_image"].abs().max() < 1 and out["h_text"].abs().max() < 1
    assert model.classifier.prototypes().shape == (5, 2 * 4)  # (C, 2 F)
    torch.testing.assert_close(model.encode_image(image), out["h_image"])
    torch.testing.assert_close(model.encode_text(text), out["h_text"])
    # label scores = [F_I || F_T] P^T
    fused = torch.cat([model.image_encoder(image), model.text_encoder(text)], dim=1)
    torch.testing.assert_close(out["label_logits"], fused @ model.classifier.prototypes().T)


def test_egath_g_has_no_classifier():
    model = small_model(use_gat=False)
    assert model.classifier is None
    assert not any(name.startswith("classifier") for name in model.state_dict())
    out = model(torch.randn(3, 6), torch.rand(3, 5))
    assert set(out) == {"h_image", "h_text"}


# --------------------------------------------------------------------------- training fixtures

N, C, D_IMG, VOCAB = 60, 4, 8, 10
N_QUERY, N_TRAIN = 12, 32
PARAMS = dict(epochs=3, batch_size=16, d_model=16, ff_dim=16, feature_dim=16, gat_hidden=16,
              lr=1e-3, seed=0)
BITS = 8


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    labels = (rng.random((N, C)) < 0.35).astype(np.uint8)
    labels[np.arange(N), rng.integers(C, size=N)] = 1
    bow = ((labels @ rng.random((C, VOCAB)) + rng.random((N, VOCAB))) > 0.9).astype(np.uint8)
    image = (labels @ rng.standard_normal((C, D_IMG)) + 0.3 * rng.standard_normal((N, D_IMG)))
    query, train = permutation_split(N, N_QUERY, N_TRAIN, seed=1)
    pairs, features = root / "pairs.h5", root / "features.h5"
    write_pairs(pairs, labels, query, train, bow=bow, dataset="tiny", split_seed=1)
    write_features(features, image, rng.standard_normal((N, D_IMG)), rng.standard_normal((C, D_IMG)))
    graph = root / "graph.h5"
    build_graph_from_clip(pairs, features, graph, 0.3)
    return {"pairs": pairs, "features": features, "graph": graph, "labels": labels,
            "query": query, "database": np.setdiff1d(np.arange(N), query)}


def run_train(files, out, method="egath", params=None, **kwargs):
    return training.train(files["pairs"], files["features"], files["graph"], out, method, BITS,
                          dict(params or PARAMS), dataset="tiny", **kwargs)


@pytest.fixture(scope="module")
def reference_run(data_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "model.pt"
    result = run_train(data_files, out)
    return out, result


# --------------------------------------------------------------------------- training

def test_training_is_deterministic(data_files, reference_run, tmp_path):
    _, first = reference_run
    second = run_train(data_files, tmp_path / "model.pt")
    assert_same_state(first["state_dict"], second["state_dict"])
    assert [h["total"] for h in first["history"]] == [h["total"] for h in second["history"]]


def test_training_changes_the_weights_and_another_seed_differs(data_files, reference_run, tmp_path):
    _, first = reference_run
    other = run_train(data_files, tmp_path / "model.pt", params={**PARAMS, "epochs": 1, "seed": 1})
    assert not torch.equal(first["state_dict"]["image_hash.weight"], other["state_dict"]["image_hash.weight"])


def test_history_and_output_file(reference_run):
    out, result = reference_run
    history = result["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    for h in history:
        for name in ("triplet", "quantization", "classification", "total"):
            assert math.isfinite(h[name]), name
        assert h["total"] > 0
    # learning rate decays from lr towards lr_min: lr * (lr_min / lr)^(e / epochs)
    decay = (1e-6 / 1e-3) ** (1 / 3)
    for e, h in enumerate(history):
        assert h["lr"] == pytest.approx(1e-3 * decay ** e)
    assert not (out.parent / "model.pt.ckpt").exists()
    saved = torch.load(out, weights_only=False)
    assert saved["method"] == "egath" and saved["bits"] == BITS and saved["dataset"] == "tiny"
    assert saved["config"]["epochs"] == 3 and saved["config"]["d_model"] == 16
    assert saved["model_config"]["n_labels"] == C and saved["model_config"]["image_dim"] == D_IMG
    assert saved["model_config"]["text_dim"] == VOCAB
    assert len(saved["history"]) == 3
    assert_same_state(saved["state_dict"], result["state_dict"])


def interrupt_in_epoch_2(monkeypatch, train_once):
    """Run `train_once` with the B update of epoch 2 failing, as a kill after epoch 1 would."""
    interrupt_in_epoch(monkeypatch, egath_method.EgathObjective, 2, train_once)


def test_interrupted_run_resumes_to_the_same_state(data_files, tmp_path, monkeypatch):
    assert_resumes_like_an_uninterrupted_run(lambda out: run_train(data_files, out), tmp_path, monkeypatch,
                                             egath_method.EgathObjective)


def test_checkpoint_of_other_settings_is_ignored(data_files, reference_run, tmp_path, monkeypatch):
    _, uninterrupted = reference_run
    # a checkpoint from a run with another seed must not be resumed
    interrupt_in_epoch_2(monkeypatch, lambda: run_train(data_files, tmp_path / "other.pt",
                                                       params={**PARAMS, "seed": 7}))
    (tmp_path / "other.pt.ckpt").rename(tmp_path / "model.pt.ckpt")
    result = run_train(data_files, tmp_path / "model.pt")
    assert_same_state(uninterrupted["state_dict"], result["state_dict"])


def test_unknown_training_parameter(data_files, tmp_path):
    with pytest.raises(ValueError, match="learning_rate"):
        run_train(data_files, tmp_path / "model.pt", params={"epochs": 1, "learning_rate": 0.1})
    assert not (tmp_path / "model.pt").exists()


def test_unknown_method(data_files, tmp_path):
    with pytest.raises(ValueError, match="egath-x"):
        run_train(data_files, tmp_path / "model.pt", method="egath-x")


def test_egath_t_has_no_triplet_term(data_files, tmp_path):
    result = run_train(data_files, tmp_path / "model.pt", method="egath-t", params={**PARAMS, "epochs": 1})
    (h,) = result["history"]
    assert "triplet" not in h and math.isfinite(h["classification"])
    # total = quantization + classification (weights 1, 1)
    assert h["total"] == pytest.approx(h["quantization"] + h["classification"], rel=1e-5)


# --------------------------------------------------------------------------- checkpoint / encoding

def reference_model(result, graph_path):
    """The trained EGATH built by hand, behind the input transform it was trained with."""
    graph = load_graph(graph_path)
    model = build_model(ModelConfig(**result["model_config"]), graph.adjacency, graph.node_features)
    model.load_state_dict(result["state_dict"])
    return InputTransform.from_state(result["input_transform"]).wrap(model).eval()


def test_model_from_checkpoint_reproduces_codes(data_files, reference_run):
    out, result = reference_run
    direct = reference_model(result, data_files["graph"])
    rebuilt = model_from_checkpoint(torch.load(out, weights_only=False)).eval()
    assert isinstance(rebuilt, TransformedInputs)  # EGATH reads standardised features
    data = training.load_split(data_files["pairs"], data_files["features"], "database")
    with torch.no_grad():
        for a, b in ((direct.encode_image(data.image), rebuilt.encode_image(data.image)),
                     (direct.encode_text(data.text), rebuilt.encode_text(data.text))):
            assert torch.equal(binarize(a), binarize(b))
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(direct.model.classifier.prototypes(), rebuilt.model.classifier.prototypes())
    # the rebuilt graph is the graph trained on
    graph = load_graph(data_files["graph"])
    torch.testing.assert_close(rebuilt.model.classifier.node_features, torch.from_numpy(graph.node_features))
    source, target = rebuilt.model.classifier.edge_index
    adjacency = np.zeros((C, C), np.uint8)
    adjacency[target.numpy(), source.numpy()] = 1
    np.testing.assert_array_equal(adjacency, graph.adjacency)


def test_encode_dataset(data_files, reference_run, tmp_path):
    out, result = reference_run
    codes_path = encode_dataset(out, data_files["pairs"], data_files["features"], tmp_path / "codes.h5",
                                batch_size=7)  # batches not aligned to the row counts
    direct = reference_model(result, data_files["graph"])
    n_db = N - N_QUERY
    with h5py.File(codes_path, "r") as f:
        assert f.attrs["method"] == "egath" and f.attrs["bits"] == BITS and f.attrs["dataset"] == "tiny"
        for split, rows in (("query", data_files["query"]), ("database", data_files["database"])):
            n = N_QUERY if split == "query" else n_db
            for modality in ("image", "text"):
                codes = f[f"{split}/{modality}"][:]
                assert codes.dtype == np.int8 and codes.shape == (n, BITS)
                assert set(np.unique(codes)) <= {-1, 1}
            labels = f[f"{split}/labels"][:]
            assert labels.dtype == np.uint8
            np.testing.assert_array_equal(labels, data_files["labels"][rows])
            data = training.load_split(data_files["pairs"], data_files["features"], split)
            with torch.no_grad():
                want_image = binarize(direct.encode_image(data.image)).to(torch.int8).numpy()
                want_text = binarize(direct.encode_text(data.text)).to(torch.int8).numpy()
            np.testing.assert_array_equal(f[f"{split}/image"][:], want_image)
            np.testing.assert_array_equal(f[f"{split}/text"][:], want_text)


def test_egath_g_train_checkpoint_and_encode(data_files, tmp_path):
    out = tmp_path / "model.pt"
    result = run_train(data_files, out, method="egath-g", params={**PARAMS, "epochs": 1})
    assert "classification" not in result["history"][0]
    assert not any(k.startswith("classifier") for k in result["state_dict"])
    model = model_from_checkpoint(torch.load(out, weights_only=False))
    assert model.model.classifier is None
    encode_dataset(out, data_files["pairs"], data_files["features"], tmp_path / "codes.h5")
    with h5py.File(tmp_path / "codes.h5", "r") as f:
        assert f["query/image"].shape == (N_QUERY, BITS)
        assert set(np.unique(f["database/text"][:])) <= {-1, 1}


# --------------------------------------------------------------------------- epoch selection

def test_validation_selection_keeps_the_best_epoch(data_files, tmp_path):
    params = {**PARAMS, "epochs": 4, "selection": "validation", "n_validation": 8}
    result = run_train(data_files, tmp_path / "model.pt", params=params)
    scores = [h["validation_map"] for h in result["history"]]
    best_epoch = int(np.argmax(scores)) + 1
    assert f"epoch {best_epoch} of 4" in result["epoch_selection"]
    # the kept weights give back the best validation mAP on the same held-out pairs
    train_data = training.load_split(data_files["pairs"], data_files["features"], "train")
    _, validation = training.split_validation(train_data, 8, seed=0)
    model = model_from_checkpoint(torch.load(tmp_path / "model.pt", weights_only=False))
    assert training.validation_map(model, validation, "cpu") == pytest.approx(max(scores), abs=1e-12)
    assert validation.labels.shape[0] == 8


@pytest.mark.parametrize("params, message", [
    ({"selection": "validation"}, "n_validation"),
    ({"average_window": 0}, "average_window"),
    ({"selection": "best_test"}, "selection"),
    ({"selection": "validation", "n_validation": N_TRAIN}, "n_validation"),
])
def test_bad_selection_settings_are_refused(data_files, tmp_path, params, message):
    with pytest.raises(ValueError, match=message):
        run_train(data_files, tmp_path / "model.pt", params={**PARAMS, **params})
    assert not (tmp_path / "model.pt").exists()


def test_training_killed_with_sigkill_resumes_to_the_same_codes(data_files, reference_run, tmp_path):
    """A real kill -9 after the first epoch's checkpoint, then a rerun: the codes equal those
    of the uninterrupted run."""
    reference_out, _ = reference_run
    out = tmp_path / "model.pt"
    script = textwrap.dedent(f"""
        import time, torch
        from egath import training
        from egath.methods import egath as egath_method
        torch.set_num_threads(1)
        real = egath_method.update_codes
        calls = []
        def slow_after_first_epoch(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                time.sleep(600)  # killed here, with epoch 1 checkpointed
            return real(*args, **kwargs)
        egath_method.update_codes = slow_after_first_epoch
        training.train({str(data_files['pairs'])!r}, {str(data_files['features'])!r},
                       {str(data_files['graph'])!r}, {str(out)!r}, "egath", {BITS}, {PARAMS!r},
                       dataset="tiny")
    """)
    process = subprocess.Popen([sys.executable, "-c", script])
    checkpoint = tmp_path / "model.pt.ckpt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    time.sleep(0.5)  # the checkpoint is renamed into place whole; give the epoch-2 call time to start
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert checkpoint.exists() and not out.exists()

    run_train(data_files, out)
    encode_dataset(reference_out, data_files["pairs"], data_files["features"], tmp_path / "ref.h5")
    encode_dataset(out, data_files["pairs"], data_files["features"], tmp_path / "resumed.h5")
    with h5py.File(tmp_path / "ref.h5") as a, h5py.File(tmp_path / "resumed.h5") as b:
        for key in ("query/image", "query/text", "database/image", "database/text"):
            np.testing.assert_array_equal(a[key][:], b[key][:])


# --------------------------------------------------------------------------- wiring of the training loop


class Recorder:
    """Records, through EGATH's objective and model builder, what the training loop feeds them."""

    def __init__(self, monkeypatch):
        self.batches, self.h_at_epoch_end, self.outputs = [], [], []
        self.initial_state, self.forward_inputs, self.training_flags = None, [], []
        loss, end_epoch = egath_method.EgathObjective.loss, egath_method.EgathObjective.end_epoch
        build = egath_method.build_model

        def recording_loss(objective, out, labels, index):
            self.batches.append(index.clone())
            self.outputs.append((index.clone(), out["h_image"].detach().clone(), out["h_text"].detach().clone()))
            return loss(objective, out, labels, index)

        def recording_end_epoch(objective, h_image, h_text):
            self.h_at_epoch_end.append((h_image.clone(), h_text.clone(), self.outputs))
            self.outputs = []
            return end_epoch(objective, h_image, h_text)

        def recording_build(*args, **kwargs):
            model = build(*args, **kwargs)
            self.initial_state = {name: p.detach().clone() for name, p in model.named_parameters()}

            def pre_hook(module, inputs):
                self.forward_inputs.append(inputs[0].detach().clone())
                self.training_flags.append(module.training)

            model.register_forward_pre_hook(pre_hook)
            return model

        monkeypatch.setattr(egath_method.EgathObjective, "loss", recording_loss)
        monkeypatch.setattr(egath_method.EgathObjective, "end_epoch", recording_end_epoch)
        monkeypatch.setattr(egath_method, "build_model", recording_build)

    def epochs(self):
        return len(self.h_at_epoch_end)


def test_a_resume_runs_only_the_epochs_left(data_files, tmp_path, monkeypatch, caplog):
    out = tmp_path / "model.pt"
    interrupt_in_epoch_2(monkeypatch, lambda: run_train(data_files, out))
    recorder = Recorder(monkeypatch)
    with caplog.at_level("INFO", logger="egath.training"):
        result = run_train(data_files, out)
    assert recorder.epochs() == 2  # epochs 2 and 3, not 1 again
    assert "resuming from" in caplog.text and "after epoch 1" in caplog.text
    assert [h["epoch"] for h in result["history"]] == [1, 2, 3]


def test_each_batch_loss_reads_the_codes_of_its_own_samples():
    cfg = training.TrainConfig(quantization_weight=1.0)
    labels = torch.eye(4).repeat(3, 1)  # 12 samples
    objective = egath_method.EgathObjective(cfg, labels, bits=6, use_triplet=False)
    index = torch.tensor([9, 2, 7])
    codes = objective.state.codes[index]
    assert not torch.equal(codes, objective.state.codes[:3])  # B[:b] would be another B
    terms = objective.loss({"h_image": codes, "h_text": codes}, labels[index], index)
    assert float(terms["quantization"]) == 0.0


def test_the_code_update_receives_every_network_output_of_the_epoch(data_files, tmp_path, monkeypatch):
    recorder = Recorder(monkeypatch)
    run_train(data_files, tmp_path / "model.pt")
    assert recorder.epochs() == PARAMS["epochs"]
    for h_image, h_text, outputs in recorder.h_at_epoch_end:
        covered = torch.zeros(h_image.shape[0], dtype=torch.bool)
        for index, out_image, out_text in outputs:
            torch.testing.assert_close(h_image[index], out_image, rtol=0, atol=0)
            torch.testing.assert_close(h_text[index], out_text, rtol=0, atol=0)
            covered[index] = True
        assert covered.all() and (h_image.abs() > 0).all()


def test_every_epoch_visits_each_sample_once_in_a_new_order(data_files, tmp_path, monkeypatch):
    recorder = Recorder(monkeypatch)
    run_train(data_files, tmp_path / "model.pt")
    per_epoch = len(recorder.batches) // PARAMS["epochs"]
    orders = [torch.cat(recorder.batches[e * per_epoch:(e + 1) * per_epoch]) for e in range(PARAMS["epochs"])]
    for order in orders:
        assert sorted(order.tolist()) == list(range(N_TRAIN))
    assert len({tuple(order.tolist()) for order in orders}) == PARAMS["epochs"]


def test_training_moves_every_weight_from_its_initial_value(data_files, tmp_path, monkeypatch):
    recorder = Recorder(monkeypatch)
    result = run_train(data_files, tmp_path / "model.pt", params={**PARAMS, "epochs": 1})
    trained = result["state_dict"]
    moved = {name: not torch.equal(value, trained[name]) for name, value in recorder.initial_state.items()}
    assert moved and all(moved.values()), [name for name, m in moved.items() if not m]


def test_validation_pairs_never_reach_training_and_training_stays_in_train_mode(data_files, tmp_path, monkeypatch):
    recorder = Recorder(monkeypatch)
    params = {**PARAMS, "selection": "validation", "n_validation": 8}
    run_train(data_files, tmp_path / "model.pt", params=params)
    assert recorder.training_flags and all(recorder.training_flags)  # dropout on in every step
    _, validation = training.split_validation(
        training.load_split(data_files["pairs"], data_files["features"], "train"), 8, seed=0)
    seen = {tuple(row.tolist()) for batch in recorder.forward_inputs for row in batch}
    assert len(seen) == N_TRAIN - 8
    assert not seen & {tuple(row.tolist()) for row in validation.image}


def test_validation_map_leaves_the_model_in_train_mode(data_files, reference_run):
    _, result = reference_run
    model = reference_model(result, data_files["graph"]).train()
    data = training.load_split(data_files["pairs"], data_files["features"], "train")
    training.validation_map(model, data, "cpu")
    assert model.training


def test_egath_learns_far_above_chance_outside_the_workflow(separable_files, tmp_path):
    files = separable_files
    out = tmp_path / "model.pt"
    params = dict(epochs=15, batch_size=32, d_model=32, ff_dim=32, feature_dim=32, gat_hidden=32,
                  lr=1e-3, lr_min=1e-4, dropout=0.0, seed=0)
    training.train(files["pairs"], files["features"], files["graph"], out, "egath", separable.BITS, params,
                   dataset="separable")
    codes = encode_dataset(out, files["pairs"], files["features"], tmp_path / "codes.h5")
    assert separable.retrieval_map(codes) > separable.random_codes_map(files) + 0.25


def test_a_checkpoint_of_other_data_with_the_same_sizes_is_not_resumed(data_files, tmp_path, monkeypatch, caplog):
    """Another split_seed draws another training set of the same size: its checkpoint must not
    be resumed (the run key holds a digest of the training data, not only n_train)."""
    other = dict(data_files)
    query, train = permutation_split(N, N_QUERY, N_TRAIN, seed=2)
    with h5py.File(data_files["pairs"]) as f:
        bow, labels = f["bow"][()], f["labels"][()]
    other["pairs"] = tmp_path / "pairs.h5"
    write_pairs(other["pairs"], labels, query, train, bow=bow, dataset="tiny", split_seed=2)
    other["graph"] = tmp_path / "graph.h5"
    build_graph_from_clip(other["pairs"], data_files["features"], other["graph"], 0.3)
    interrupt_in_epoch_2(monkeypatch, lambda: run_train(other, tmp_path / "other.pt"))
    (tmp_path / "other.pt.ckpt").rename(tmp_path / "model.pt.ckpt")

    with caplog.at_level("INFO", logger="egath.training"):
        resumed = run_train(data_files, tmp_path / "model.pt")
    assert "ignoring" in caplog.text and "resuming" not in caplog.text
    fresh = run_train(data_files, tmp_path / "fresh.pt")
    assert_same_state(fresh["state_dict"], resumed["state_dict"])


def test_an_unreadable_checkpoint_is_ignored_not_fatal(data_files, reference_run, tmp_path, caplog):
    (tmp_path / "model.pt.ckpt").write_bytes(b"cut short")
    with caplog.at_level("INFO", logger="egath.training"):
        result = run_train(data_files, tmp_path / "model.pt")
    assert "unreadable" in caplog.text and str(tmp_path / "model.pt.ckpt") in caplog.text
    assert_same_state(reference_run[1]["state_dict"], result["state_dict"])


def test_an_unreadable_kept_model_is_ignored_and_the_seed_trained(data_files, reference_run, tmp_path, caplog):
    kept = tmp_path / ".trained" / "seed0.pt"
    kept.parent.mkdir()
    kept.write_bytes(b"cut short")
    with caplog.at_level("INFO", logger="egath.training"):
        result = run_train(data_files, tmp_path / "model.pt", reuse_path=kept)
    assert "unreadable" in caplog.text and str(kept) in caplog.text
    assert_same_state(reference_run[1]["state_dict"], result["state_dict"])
    # the finished model replaces the damaged one, and a second call reuses it
    with caplog.at_level("INFO", logger="egath.training"):
        again = run_train(data_files, tmp_path / "again.pt", reuse_path=kept)
    assert "reusing" in caplog.text
    assert_same_state(result["state_dict"], again["state_dict"])


# --------------------------------------------------------------------------- selection by weight averaging

def test_average_selection_keeps_the_mean_of_the_last_epochs_weights(data_files, tmp_path, monkeypatch):
    # record the weights after each epoch, then compare the kept model with their mean
    snapshots = []
    real = training.train_epoch

    def recording(run, state, outputs):
        record = real(run, state, outputs)
        snapshots.append({k: v.detach().clone() for k, v in state.model.state_dict().items()})
        return record

    monkeypatch.setattr(training, "train_epoch", recording)
    params = {**PARAMS, "epochs": 5, "selection": "average", "average_window": 0.4}
    result = run_train(data_files, tmp_path / "model.pt", params=params)
    assert len(snapshots) == 5 and result["epoch_selection"] == "weights averaged over the last 2 epochs (4-5)"
    for key, value in result["state_dict"].items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (snapshots[3][key] + snapshots[4][key]) / 2)
    last = {**PARAMS, "epochs": 5, "selection": "last"}
    assert_same_state(run_train(data_files, tmp_path / "last.pt", params=last)["state_dict"], snapshots[-1])


def test_average_selection_recomputes_batch_norm_statistics_for_the_kept_weights(separable_files, tmp_path):
    # GCDH's text network has BatchNorm: its running statistics must be those of the averaged weights
    files = (separable_files["pairs"], separable_files["features"], separable_files["graph"])
    run = training.prepare_run(*files, "gcdh", separable.BITS,
                               {"epochs": 3, "batch_size": 16, "feature_dim": 16, "gat_hidden": 8})
    state = training.start_training(run)
    training.run_epochs(run, state)
    training.select_weights(run, state)
    norm = state.model.text_net[1]
    with torch.no_grad():  # one pass in order, batch by batch: the mean of the batches' statistics
        batches = [state.model.text_net[0](x) for x in run.data.text.split(16)]
    torch.testing.assert_close(norm.running_mean, torch.stack([b.mean(0) for b in batches]).mean(0))
    torch.testing.assert_close(norm.running_var, torch.stack([b.var(0) for b in batches]).mean(0))


def test_held_out_pairs_give_a_validation_curve_under_every_selection(data_files, tmp_path):
    result = run_train(data_files, tmp_path / "model.pt", params={**PARAMS, "epochs": 3, "n_validation": 8})
    assert result["config"]["selection"] == "average"
    assert [0 <= h["validation_map"] <= 1 for h in result["history"]] == [True] * 3


# --------------------------------------------------------------------------- the classification term's reach

def shared_gradients(model, classification_weight, reduction="mean"):
    torch.manual_seed(1)
    image, text = torch.randn(6, 6), torch.rand(6, 5)
    labels = torch.tensor([[1, 0, 0, 1, 0], [0, 1, 0, 0, 0], [1, 0, 1, 0, 0],
                           [0, 0, 0, 1, 1], [1, 1, 0, 0, 0], [0, 0, 1, 0, 1]], dtype=torch.float32)
    codes = binarize(torch.randn(6, 8))
    model.zero_grad()
    terms = egath_method.egath_loss(model(image, text), labels, codes, 0.4, 10.0, 1.0, classification_weight,
                                    reduction=reduction)
    terms["total"].backward()
    return [p.grad.clone() for p in [*model.image_encoder.parameters(), *model.text_encoder.parameters()]]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_the_classification_term_reaches_the_shared_layers_only_with_a_weight(reduction):
    model = small_model().train()
    without = shared_gradients(model, 0.0, reduction)
    with_bce = shared_gradients(model, 1.0, reduction)
    # with weight 0 the gradients are those of a model without the classifier's scores
    model_g = small_model(use_gat=False).train()
    model_g.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("classifier")})
    for a, b in zip(without, shared_gradients(model_g, 1.0, reduction)):
        torch.testing.assert_close(a, b)
    changed = max(float((a - b).norm() / b.norm()) for a, b in zip(with_bce, without) if b.norm() > 0)
    # per-sample terms give the BCE a share that shows; GCDH's sums leave it a sliver
    assert changed > (0.01 if reduction == "mean" else 0.0)
