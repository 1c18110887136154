"""A small separable retrieval problem for method tests, the mAP helpers they compare with, and
the checks they share: train, rebuild from model.pt and encode; resume after an interruption.

The `separable_files` fixture (tests/conftest.py) writes it once per session:
N pairs, C labels, D-dimensional CLIP-like features, a 12-word bag-of-words; train with BITS.
"""
from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
import torch

from egath import training
from egath.encoding import encode_dataset
from egath.graph import build_graph, clip_label_embeddings
from egath.inputs import TransformedInputs
from egath.methods import REGISTRY, model_from_checkpoint
from egath.methods.base import binarize
from egath.metrics import mean_average_precision
from h5files import write_features, write_pairs

N, C, D = 120, 4, 16
N_QUERY, N_TRAIN = 24, 64
BITS = 8


def write_separable_files(root):
    """Labels drive both modalities (CLIP-like features and bag-of-words): a separable problem.
    Returns the paths of pairs.h5, features.h5 and graph.h5."""
    rng = np.random.default_rng(0)
    labels = np.zeros((N, C), np.uint8)
    labels[np.arange(N), rng.integers(C, size=N)] = 1
    extra = rng.random(N) < 0.3  # about a third of the samples carry a second label
    labels[extra, rng.integers(C, size=int(extra.sum()))] = 1
    image = labels @ rng.standard_normal((C, D)) + 0.3 * rng.standard_normal((N, D))
    text = labels @ rng.standard_normal((C, D)) + 0.3 * rng.standard_normal((N, D))
    bow = ((labels @ rng.random((C, 12)) + 0.3 * rng.random((N, 12))) > 0.6).astype(np.uint8)
    order = rng.permutation(N)
    query, train = order[:N_QUERY], order[N_QUERY:N_QUERY + N_TRAIN]
    pairs, features = root / "pairs.h5", root / "features.h5"
    write_pairs(pairs, labels, query, train, bow=bow, dataset="separable")
    write_features(features, image, text, rng.standard_normal((C, D)))
    graph = root / "graph.h5"
    build_graph(pairs, graph, 0.3, *clip_label_embeddings(features))
    return {"pairs": pairs, "features": features, "graph": graph}


def retrieval_map(codes_path):
    """Mean of I->T and T->I mAP, query against database, from codes.h5."""
    with h5py.File(codes_path, "r") as f:
        q, d = ({k: f[f"{split}/{k}"][:] for k in ("image", "text", "labels")} for split in ("query", "database"))
    return 0.5 * (mean_average_precision(q["image"], d["text"], q["labels"], d["labels"])
                  + mean_average_precision(q["text"], d["image"], q["labels"], d["labels"]))


def random_codes_map(files):
    with h5py.File(files["pairs"], "r") as f:
        labels = f["labels"][:]
        query, database = f["split/query"][:], f["split/database"][:]
    rng = np.random.default_rng(0)
    scores = [mean_average_precision(rng.choice([-1, 1], (len(query), BITS)),
                                     rng.choice([-1, 1], (len(database), BITS)), labels[query], labels[database])
              for _ in range(5)]
    return float(np.mean(scores))


# --------------------------------------------------------------------------- what the method tests share

def assert_grad_close(fast, slow, inputs):
    """The gradients of two losses with respect to `inputs` agree (float64 precision)."""
    # the two losses may share the graph of their inputs (a softmax): keep it for the second pass
    for a, b in zip(torch.autograd.grad(fast, inputs, retain_graph=True), torch.autograd.grad(slow, inputs)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def train_separable(files, out, model, text, params, **options):
    """Train method model `model` with text input `text` on the separable problem into `out`;
    `options` go to egath.training.train (a two-step method's `first_stage`)."""
    return training.train(files["pairs"], files["features"], files["graph"], out, f"{model}-{text}", BITS,
                          dict(params), dataset="separable", spec={"model": model, "text": text}, **options)


def train_rebuild_encode(files, tmp_path, model, text, params, loss_falls_from=1, **options):
    """Train on the separable problem into tmp_path/model.pt and check the run: its loss is finite
    and the last epoch's is below epoch `loss_falls_from`'s (None: a closed-form model, no epochs),
    model.pt rebuilds `model`'s class with the trained weights, and encode_dataset writes the codes
    of the rebuilt model's encode_image and encode_text. Returns the result and its query/database mAP."""
    out = tmp_path / "model.pt"
    result = train_separable(files, out, model, text, params, **options)
    assert out.exists() and not (tmp_path / "model.pt.ckpt").exists()
    history = result["history"]
    if loss_falls_from is None:
        assert history == []
    else:
        assert len(history) == params["epochs"] and all(math.isfinite(h["total"]) for h in history)
        assert history[-1]["total"] < history[loss_falls_from - 1]["total"]

    rebuilt = model_from_checkpoint(torch.load(out, weights_only=False)).eval()
    # a method whose inputs are transformed (egath.inputs) comes back behind its transform
    inner = rebuilt.model if isinstance(rebuilt, TransformedInputs) else rebuilt
    assert type(inner).__module__ == REGISTRY[model].partition(":")[0]  # the method's own model class
    assert_same_state(result["state_dict"], inner.state_dict())
    # batches not aligned to the row counts
    codes = encode_dataset(out, files["pairs"], files["features"], tmp_path / "codes.h5", batch_size=7)
    with h5py.File(codes, "r") as f:
        for split in ("query", "database"):
            data = training.load_split(files["pairs"], files["features"], split, text=text)
            with torch.no_grad():
                want = {"image": rebuilt.encode_image(data.image), "text": rebuilt.encode_text(data.text)}
            for modality, h in want.items():
                want_codes = binarize(h).to(torch.int8).numpy()
                assert set(np.unique(want_codes)) <= {-1, 1}
                np.testing.assert_array_equal(f[f"{split}/{modality}"][:], want_codes)
    return result, retrieval_map(codes)


def interrupt_in_epoch(monkeypatch, objective_class, epoch, run):
    """Call run() with objective_class.end_epoch failing once, in epoch `epoch`, as a kill after
    the checkpoint of epoch `epoch - 1` would; the real end_epoch is back afterwards."""
    real = objective_class.end_epoch
    calls = 0

    def fail_in_epoch(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == epoch:
            raise RuntimeError(f"simulated interruption in epoch {epoch}")
        return real(*args, **kwargs)

    monkeypatch.setattr(objective_class, "end_epoch", fail_in_epoch)
    with pytest.raises(RuntimeError, match="simulated interruption"):
        run()
    monkeypatch.setattr(objective_class, "end_epoch", real)


def assert_resumes_like_an_uninterrupted_run(run, tmp_path, monkeypatch, objective_class, epoch=2):
    """run(out) trains into `out`. A run interrupted in epoch `epoch` (interrupt_in_epoch) and
    started again resumes after epoch `epoch - 1` and ends with the weights and history (times
    aside) of an uninterrupted run: model, optimiser, objective and RNG state all resume.
    Returns the checkpoint it resumed from, for the caller's checks of what the method keeps there."""
    uninterrupted = run(tmp_path / "a.pt")
    out, ckpt_path = tmp_path / "b.pt", tmp_path / "b.pt.ckpt"
    interrupt_in_epoch(monkeypatch, objective_class, epoch, lambda: run(out))
    assert ckpt_path.exists() and not out.exists()
    ckpt = torch.load(ckpt_path, weights_only=False)
    assert ckpt["epoch"] == epoch - 1 and len(ckpt["history"]) == epoch - 1

    torch.manual_seed(12345)  # scramble the global RNG: the resumed run must restore it from the checkpoint
    resumed = run(out)
    assert not ckpt_path.exists()
    assert_same_state(uninterrupted["state_dict"], resumed["state_dict"])
    history = [{k: v for k, v in h.items() if k != "seconds"} for h in resumed["history"]]
    assert [h["epoch"] for h in history] == list(range(1, len(history) + 1))
    assert history == [{k: v for k, v in h.items() if k != "seconds"} for h in uninterrupted["history"]]
    return ckpt
