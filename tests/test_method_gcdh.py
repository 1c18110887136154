"""Tests for GCDH (egath.methods.gcdh): GCDH's normalised adjacency and GCN classifier by hand,
its objective (EGATH's terms, weighted as GCDH's main.py) by hand and against a brute-force loop,
its three Adam optimisers and schedule, training end to end on the separable problem, and resume."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from egath import training
from egath.graph import LabelGraph
from egath.methods import gcdh
from egath.methods.egath import EgathObjective
from separable import assert_resumes_like_an_uninterrupted_run, random_codes_map, train_rebuild_encode, train_separable


# --------------------------------------------------------------------------- graph and classifier

def test_normalised_adjacency_by_hand():
    # A = [[1, 1], [0, 1]] (label 0 -> 1 and self-loops); column sums 1, 2
    # A' = 0.25 A / colsum + I = [[1.25, 0.125], [0, 1.125]]; row sums 1.375, 1.125
    # adj_ij = A'_ji / sqrt(r_i r_j): [[1.25 / 1.375, 0], [0.125 / sqrt(1.375 * 1.125), 1]]
    adj = gcdh.normalised_adjacency(torch.tensor([[1, 1], [0, 1]], dtype=torch.uint8), 0.25)
    expected = torch.tensor([[1.25 / 1.375, 0.0], [0.125 / math.sqrt(1.375 * 1.125), 1.0]])
    torch.testing.assert_close(adj, expected, rtol=1e-5, atol=1e-6)


def test_gcn_classifier_by_hand():
    # identity weights, adj = [[0.5, 0.5], [0, 1]], g = [[1, -4], [3, 2]]:
    # adj g = [[2, -1], [3, 2]] -> LeakyReLU(0.2) -> [[2, -0.2], [3, 2]] -> adj . = P = [[2.5, 0.9], [3, 2]]
    # fused (1, 1): scores = (3.4, 5)
    cfg = gcdh.GcdhConfig(image_dim=1, text_dim=1, n_labels=2, node_dim=2, bits=1, hidden_dim=1, gcn_hidden=2)
    classifier = gcdh.GCNLabelClassifier(cfg, torch.tensor([[0.5, 0.5], [0.0, 1.0]]),
                                         torch.tensor([[1.0, -4.0], [3.0, 2.0]]))
    with torch.no_grad():
        classifier.gc1.weight.copy_(torch.eye(2))
        classifier.gc2.weight.copy_(torch.eye(2))
    torch.testing.assert_close(classifier.prototypes(), torch.tensor([[2.5, 0.9], [3.0, 2.0]]))
    torch.testing.assert_close(classifier(torch.ones(1, 2)), torch.tensor([[3.4, 5.0]]))


# --------------------------------------------------------------------------- objective

def objective_with_codes(codes, **cfg_overrides):
    cfg = training.TrainConfig.from_dict({**gcdh.METHOD.training_defaults, **cfg_overrides})
    objective = EgathObjective(cfg, torch.zeros(codes.shape[0], 2), codes.shape[1])
    objective.state.codes = codes
    return objective


def test_objective_by_hand():
    # one bit: cosine is the sign product, so d = 1 - cos is 0 (same sign) or 2; margin 0.4
    # labels: sample 0 -> label 0, sample 1 -> label 1; each sample's only relevant item is itself (w = 1)
    # h_I = (0.5, -0.5), h_T = (0.5, 0.5)
    #   I->T: anchor 0: d00 - d01 + 0.4 = 0 - 0 + 0.4; anchor 1: d11 - d10 + 0.4 = 2 - 2 + 0.4   -> 0.8
    #   I->I: anchor 0: 0 - 2 + 0.4 < 0; anchor 1: likewise                                     -> 0
    #   T->I: anchor 0: 0 - 2 + 0.4 < 0; anchor 1: d(t1, i1) - d(t1, i0) + 0.4 = 2 - 0 + 0.4      -> 2.4
    #   T->T: all distances 0: 0.4 per anchor                                                  -> 0.8
    # triplet 4.0, alpha 10 -> 40; B = (1, -1): ||B - h_I||^2 = 0.5, ||B - h_T||^2 = 0.25 + 2.25
    # BCE of zero logits: log 2.  total = 40 + 3 + log 2
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out = {"h_image": torch.tensor([[0.5], [-0.5]]), "h_text": torch.tensor([[0.5], [0.5]]),
           "label_logits": torch.zeros(2, 2)}
    terms = objective_with_codes(torch.tensor([[1.0], [-1.0]])).loss(out, labels, torch.arange(2))
    assert float(terms["triplet"]) == pytest.approx(4.0)
    assert float(terms["quantization"]) == pytest.approx(3.0)
    assert float(terms["classification"]) == pytest.approx(math.log(2))
    assert float(terms["total"]) == pytest.approx(43 + math.log(2))


def brute_force_gcdh(h_i, h_t, logits, labels, codes, alpha, margin):
    """GCDH's main.py err = alpha (i_tri + t_tri) + ||B - h_i||^2 + ||B - h_t||^2 + BCE, with
    triplet_loss.py's NDCG weights, written as loops."""
    n = labels.shape[0]

    def ndcg_weight(i, j):
        sims = sorted((float(labels[i] @ labels[m]) for m in range(n)), reverse=True)
        z = sum((2 ** s - 1) / math.log2(r + 2) for r, s in enumerate(sims))
        return (2 ** float(labels[i] @ labels[j]) - 1) / z

    def distance(a, b):
        return torch.clamp(1 - (a @ b) / (a.norm() * b.norm()), min=0)

    triplet = h_i.new_zeros(())
    for anchor, target in ((h_i, h_t), (h_i, h_i), (h_t, h_i), (h_t, h_t)):
        for i in range(n):
            for j in range(n):
                for k in range(n):
                    if float(labels[i] @ labels[j]) > 0 and float(labels[i] @ labels[k]) == 0:
                        hinge = distance(anchor[i], target[j]) - distance(anchor[i], target[k]) + margin
                        triplet = triplet + ndcg_weight(i, j) * torch.relu(hinge)
    quantization = sum(((codes[i] - h[i]) ** 2).sum() for h in (h_i, h_t) for i in range(n))
    bce = sum(-(labels[i, c] * F.logsigmoid(logits[i, c]) + (1 - labels[i, c]) * F.logsigmoid(-logits[i, c]))
              for i in range(n) for c in range(labels.shape[1])) / labels.numel()
    return alpha * triplet + quantization + bce


def test_objective_matches_brute_force_value_and_gradient():
    g = torch.Generator().manual_seed(0)
    h_i = torch.randn(5, 3, generator=g, dtype=torch.float64).tanh().requires_grad_()
    h_t = torch.randn(5, 3, generator=g, dtype=torch.float64).tanh().requires_grad_()
    logits = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)
    codes = torch.randn(5, 3, generator=g, dtype=torch.float64).sign()
    objective = objective_with_codes(codes)
    terms = objective.loss({"h_image": h_i, "h_text": h_t, "label_logits": logits}, labels, torch.arange(5))
    slow = brute_force_gcdh(h_i, h_t, logits, labels, codes, alpha=10.0, margin=0.4)
    assert float(terms["triplet"].detach()) > 0
    torch.testing.assert_close(terms["total"], slow)
    # egath.methods.egath computes the NDCG weights from labels.float(): float32 precision there
    for a, b in zip(torch.autograd.grad(terms["total"], (h_i, h_t, logits)),
                    torch.autograd.grad(slow, (h_i, h_t, logits))):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


# --------------------------------------------------------------------------- optimisers, schedule, init

def small_build(n=10, batch_size=4, **overrides):
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(n, 3, generator=g) < 0.5).float()
    data = training.TrainingData(torch.randn(n, 6, generator=g), torch.randn(n, 5, generator=g), labels)
    graph = LabelGraph(cooccurrence=np.eye(3, dtype=np.int64), conditional=np.eye(3),
                       adjacency=np.eye(3, dtype=np.uint8), node_features=np.ones((3, 4), np.float32),
                       label_names=["a", "b", "c"])
    cfg = training.TrainConfig.from_dict({**gcdh.METHOD.training_defaults, "feature_dim": 8, "gat_hidden": 16,
                                          "batch_size": batch_size, **overrides})
    params = gcdh.METHOD.make_params(None)
    return gcdh.METHOD.build(8, cfg, params, data, graph), cfg, params


def test_authors_optimisers_schedule_and_defaults():
    (model, _), cfg, params = small_build()
    # config.py / main.py: Adam at 1e-4, weight decay 5e-4, batch 64, alpha 10, margin 0.4, F = 2048
    defaults = training.TrainConfig.from_dict(dict(gcdh.METHOD.training_defaults))
    assert (defaults.lr, defaults.lr_min, defaults.weight_decay, defaults.batch_size) == (1e-4, 1e-6, 5e-4, 64)
    assert (defaults.triplet_weight, defaults.margin, defaults.feature_dim, defaults.dropout) == (10.0, 0.4, 2048, 0.0)
    assert (defaults.code_gamma, defaults.code_rho, defaults.code_mu, defaults.code_lambda) == (0.01, 1.05, 0.5, 1.0)
    assert "epochs" not in gcdh.METHOD.training_defaults

    optimizers = gcdh.METHOD.optimizers(model, cfg, params)
    assert len(optimizers) == 3 and all(type(opt) is torch.optim.Adam for opt in optimizers)
    groups = [opt.param_groups[0] for opt in optimizers]
    assert all(len(opt.param_groups) == 1 for opt in optimizers)
    assert all(g["lr"] == 1e-4 and g["weight_decay"] == 5e-4 for g in groups)
    ids = [{id(p) for p in g["params"]} for g in groups]
    image = {id(p) for m in (model.image_net, model.image_hash) for p in m.parameters()}
    text = {id(p) for m in (model.text_net, model.text_hash) for p in m.parameters()}
    assert ids == [image, text, {id(p) for p in model.classifier.parameters()}]
    assert set().union(*ids) == {id(p) for p in model.parameters()}

    # main.py: lr * gamma^e in epoch e (0-based), gamma = (1e-6 / lr)^(1 / epochs), flat within an epoch
    cfg100 = training.TrainConfig.from_dict({**gcdh.METHOD.training_defaults, "epochs": 100})
    gamma = (1e-6 / 1e-4) ** (1 / 100)
    for progress, epoch in ((0.0, 0), (0.5, 0), (1.0, 1), (37.9, 37), (99.5, 99)):
        assert gcdh.METHOD.lr_scale(cfg100, params, progress) == pytest.approx(gamma ** epoch)


def test_authors_init():
    (model, _), _, _ = small_build()
    # kaiming_normal_ weights and zero biases on GCDH's own layers; GCN weights uniform(+-1/sqrt(out))
    assert torch.equal(model.image_hash.bias, torch.zeros(8)) and torch.equal(model.text_hash.bias, torch.zeros(8))
    first = model.text_net[0]
    assert first.weight.shape == (32, 5)  # 4F with F = 8
    assert [m.out_features for m in model.text_net if isinstance(m, torch.nn.Linear)] == [32, 16, 8]
    big = gcdh.kaiming_linear(400, 300)
    assert float(big.weight.detach().std()) == pytest.approx(math.sqrt(2 / 400), rel=0.02)
    assert float(model.classifier.gc2.weight.detach().abs().max()) <= 1 / math.sqrt(16)
    assert model.classifier.gc2.weight.shape == (16, 16)  # 1024 -> 2F in GCDH


def test_batch_of_one_sample_is_refused():
    with pytest.raises(ValueError, match="last batch of one sample"):
        small_build(n=9, batch_size=4)


# --------------------------------------------------------------------------- end to end

PARAMS = dict(epochs=15, batch_size=32, feature_dim=32, gat_hidden=32, lr=1e-2, lr_min=1e-3, seed=0)


def test_trains_saves_and_encodes_above_chance(separable_files, tmp_path):
    _, score = train_rebuild_encode(separable_files, tmp_path, "gcdh", "bow", PARAMS)
    assert score > random_codes_map(separable_files) + 0.4  # measured 0.954 vs 0.406


def test_interrupted_run_resumes_to_the_same_state(separable_files, tmp_path, monkeypatch):
    params = {**PARAMS, "epochs": 3}
    assert_resumes_like_an_uninterrupted_run(lambda out: train_separable(separable_files, out, "gcdh", "bow", params),
                                             tmp_path, monkeypatch, EgathObjective)
