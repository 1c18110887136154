"""Tests for DNPH (egath.methods.dnph): its three loss terms and the one-to-one matching of codes to
random hypercube vertices on hand-computed cases and against brute-force loops (value and gradient),
its fixed proxies, optimiser, parameter groups and schedule as the authors' code has them, and a run
trained end to end, rebuilt from model.pt, encoded, and resumed after an interruption."""

import itertools
import math

import numpy as np
import pytest
import torch

from egath import training
from egath.methods import dnph, dsph
from egath.methods.base import HeadConfig, StatelessObjective
from separable import (BITS, assert_grad_close, assert_resumes_like_an_uninterrupted_run, random_codes_map,
                       train_rebuild_encode, train_separable)


# --------------------------------------------------------------------------- hand-computed cases

def test_proxy_term_by_hand():
    # proxies along e1 and e2 (their scale does not matter); one sample with label 0.
    # image code (0.5, 0) -> unit (1, 0): squared distances (0, 2), + margin 1 on label 0: (1, 2);
    #   -log softmax(-d)_0 = log(1 + e^-1) = 0.313262
    # text code (0, 0.9) -> (0, 1): (2, 0) + (1, 0) = (3, 0); -log softmax_0 = 3 + log(1 + e^-3) = 3.048587
    # the mean over the two codes: 1.680925
    proxies = torch.tensor([[2.0, 0.0], [0.0, 0.125]])
    value = dnph.proxy_term(torch.tensor([[0.5, 0.0]]), torch.tensor([[0.0, 0.9]]), torch.tensor([[1.0, 0.0]]),
                            proxies, margin=1.0)
    assert float(value) == pytest.approx(1.680925, abs=1e-6)
    # two labels, both codes at e1: d = (0 + 1, 2 + 1) = (1, 3); label 0 costs log(1 + e^-2) = 0.126928,
    # label 1 costs 2 + 0.126928: their sum 2.253856 for each code
    value = dnph.proxy_term(torch.tensor([[0.3, 0.0]]), torch.tensor([[0.7, 0.0]]), torch.tensor([[1.0, 1.0]]),
                            proxies, margin=1.0)
    assert float(value) == pytest.approx(2.253856, abs=1e-6)
    # without the margin, a code on its own proxy: d = (0, 2), -log softmax_0 = log(1 + e^-2)
    value = dnph.proxy_term(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]]),
                            proxies, margin=0.0)
    assert float(value) == pytest.approx(math.log(1 + math.exp(-2)))


def test_classification_term_targets_the_first_label():
    # labels (0, 1, 1): the target is class 1. Image scores (0, 0, 0): -log(1/3) = log 3; text scores
    # (0, log 2, 0): -log(2 / 4) = log 2; together log 6. Class 2 as the target would give log 3 + log 4.
    labels = torch.tensor([[0.0, 1.0, 1.0]])
    value = dnph.classification_term(torch.zeros(1, 3), torch.tensor([[0.0, math.log(2), 0.0]]), labels)
    assert float(value) == pytest.approx(math.log(6))


def test_targets_are_matched_by_least_summed_distance_not_squared_distance():
    # codes h0 = (1, -0.5), h1 = (-0.5, -0.9); vertices t0 = (1, -1), t1 = (1, 1).
    # distances: h0-t0 0.5, h0-t1 1.5, h1-t0 sqrt(2.26) = 1.503330, h1-t1 sqrt(5.86) = 2.420744.
    # h0-t0, h1-t1 sums to 2.920744 < 3.003330 (swapped): kept in order. Squared distances would
    # swap them (6.11 against 4.51), and so would the largest summed inner product (0.45 against 0.05).
    h = torch.tensor([[1.0, -0.5], [-0.5, -0.9]])
    targets = torch.tensor([[1.0, -1.0], [1.0, 1.0]])
    assigned = dnph.assign_targets(h, targets)
    torch.testing.assert_close(assigned, targets)
    assert float(dnph.uniform_term(h, assigned)) == pytest.approx((1.5 - 1.4) / 2)
    # the same vertices given the other way round reach the same codes
    torch.testing.assert_close(dnph.assign_targets(h, targets.flip(0)), targets)
    # codes near the opposite vertices: h0 = (0.9, -0.1) is 1.104536 from t1, h1 = (-0.8, 0.7) is
    # 1.711724 from t0 (2.816260 in all; in order 2.102380 + 1.824829): swapped. Uniform: (0.8 + 0.1) / 2
    h = torch.tensor([[0.9, -0.1], [-0.8, 0.7]])
    targets = torch.tensor([[-1.0, -1.0], [1.0, 1.0]])
    torch.testing.assert_close(dnph.assign_targets(h, targets), targets.flip(0))
    assert float(dnph.uniform_term(h, dnph.assign_targets(h, targets))) == pytest.approx(0.45)


def test_loss_adds_proxy_and_classification_and_subtracts_the_weighted_uniform_term():
    # the second case above for both modalities (uniform 0.45 + 0.45), labels (1, 0) and (0, 1),
    # proxies e1, e2, zero scores (2 log 2 per modality and sample: classification 2 log 2).
    # proxy term: code 0 ~ (0.993884, -0.110432) with label 0: d = (2 - 2 * 0.993884 + 1, 2 + 2 * 0.110432)
    # = (1.012233, 2.220863), -log softmax_0 = log(1 + e^-1.208630) = 0.261291; code 1 ~ (-0.752577, 0.658505)
    # with label 1: d = (2 + 1.505153, 2 - 1.317009 + 1) = (3.505153, 1.682991): log(1 + e^-1.822162) = 0.149864;
    # each twice (image and text): mean (0.261291 + 0.149864) / 2
    h = torch.tensor([[0.9, -0.1], [-0.8, 0.7]])
    out = {"h_image": h, "h_text": h, "scores_image": torch.zeros(2, 2), "scores_text": torch.zeros(2, 2),
           "proxies": torch.eye(2)}
    labels = torch.eye(2)
    terms = dnph.dnph_loss(out, labels, torch.tensor([[-1.0, -1.0], [1.0, 1.0]]), margin=1.0, uniform_weight=0.1)
    assert float(terms["proxy"]) == pytest.approx((0.261291 + 0.149864) / 2, abs=1e-6)
    assert float(terms["classification"]) == pytest.approx(2 * math.log(2))
    assert float(terms["uniform"]) == pytest.approx(0.9)
    assert float(terms["total"]) == pytest.approx(float(terms["proxy"]) + 2 * math.log(2) - 0.09)


def test_random_vertices_are_fair_coins_of_the_seeded_generator():
    torch.manual_seed(3)
    first = dnph.random_vertices(500, 64)
    assert first.shape == (500, 64) and first.device.type == "cpu"
    assert set(first.unique().tolist()) == {-1.0, 1.0}
    assert float(first.mean()) == pytest.approx(0.0, abs=0.02)
    torch.manual_seed(3)
    assert torch.equal(dnph.random_vertices(500, 64), first)


# --------------------------------------------------------------------------- brute force

def brute_force_assignment(cost):
    """The permutation of least summed cost, by trying them all."""
    n = len(cost)
    return min(itertools.permutations(range(n)), key=lambda perm: sum(cost[i][perm[i]] for i in range(n)))


def brute_force_dnph(h_i, h_t, s_i, s_t, proxies, labels, targets, margin, weight):
    """DNPH's loss with loops (utils/utils.py DNPH_out, train/hash_train.py, utils/b_reg.py)."""
    n, bits = h_i.shape
    n_labels = labels.shape[1]
    unit = lambda v: v / torch.sqrt(sum(v[k] ** 2 for k in range(len(v))))
    proxy = h_i.new_zeros(())
    for h in (h_i, h_t):
        for i in range(n):
            a = unit(h[i])
            d = [sum((a[k] - unit(proxies[c])[k]) ** 2 for k in range(bits)) + margin * labels[i, c]
                 for c in range(n_labels)]
            log_z = torch.log(sum(torch.exp(-d[c]) for c in range(n_labels)))
            proxy = proxy + sum(labels[i, c] * (d[c] + log_z) for c in range(n_labels)) / (2 * n)
    classification = h_i.new_zeros(())
    for s in (s_i, s_t):
        for i in range(n):
            first = next(c for c in range(n_labels) if labels[i, c] == 1)
            log_z = torch.log(sum(torch.exp(s[i, c]) for c in range(n_labels)))
            classification = classification + (log_z - s[i, first]) / n
    uniform = h_i.new_zeros(())
    for h in (h_i, h_t):
        cost = [[math.sqrt(sum(float(h[i, k].detach() - targets[j, k]) ** 2 for k in range(bits))) for j in range(n)]
                for i in range(n)]
        perm = brute_force_assignment(cost)
        uniform = uniform + sum(sum(h[i, k] * targets[perm[i], k] for k in range(bits)) for i in range(n)) / n
    return proxy + classification - weight * uniform


def test_loss_matches_brute_force_value_and_gradient():
    g = torch.Generator().manual_seed(0)
    n, bits, n_labels = 5, 6, 4
    x_i, x_t = (torch.randn(n, bits, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    s_i, s_t = (torch.randn(n, n_labels, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    proxies = torch.randn(n_labels, bits, generator=g, dtype=torch.float64) / 8
    labels = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1], [1, 0, 1, 1], [0, 1, 0, 0]], dtype=torch.float64)
    targets = (torch.randint(0, 2, (n, bits), generator=g) * 2 - 1).to(torch.float64)
    h_i, h_t = torch.tanh(x_i), torch.tanh(x_t)
    out = {"h_image": h_i, "h_text": h_t, "scores_image": s_i, "scores_text": s_t, "proxies": proxies}
    terms = dnph.dnph_loss(out, labels, targets, margin=0.7, uniform_weight=0.3)
    slow = brute_force_dnph(h_i, h_t, s_i, s_t, proxies, labels, targets, 0.7, 0.3)
    torch.testing.assert_close(terms["total"], slow)
    assert_grad_close(terms["total"], slow, (x_i, x_t, s_i, s_t))


# --------------------------------------------------------------------------- model, optimiser, schedule

def small_model(bits=16):
    return dnph.DNPH(HeadConfig(image_dim=12, text_dim=10, n_labels=5, bits=bits, hidden_dim=8, dropout=0.1))


def test_layers_follow_the_authors_model():
    model = small_model()
    for hash_layer in (model.image_hash, model.text_hash):  # model/hash_model.py LinearHash
        assert isinstance(hash_layer, dsph.TanhHash) and hash_layer.dropout.p == 0.2
        assert tuple(hash_layer.fc.weight.shape) == (16, 8)
    # model/hash_model.py Pre_Layer: one Linear from the feature the hash layer reads to the labels
    assert tuple(model.image_classifier.weight.shape) == tuple(model.text_classifier.weight.shape) == (5, 8)
    out = model.eval()(torch.randn(3, 12), torch.randn(3, 10))
    assert out["h_image"].shape == out["h_text"].shape == (3, 16) and out["h_image"].abs().max() < 1
    assert out["scores_image"].shape == out["scores_text"].shape == (3, 5)
    image, text = torch.randn(3, 12), torch.randn(3, 10)
    out = model(image, text)
    torch.testing.assert_close(model.encode_image(image), out["h_image"])
    torch.testing.assert_close(model.encode_text(text), out["h_text"])
    # the proxies: N(0, 1) / 8 (utils/utils.py), a buffer saved with the weights but never trained
    assert "proxies" in dict(model.named_buffers()) and "proxies" in model.state_dict()
    assert all(p is not model.proxies for p in model.parameters())
    assert float(dnph.DNPH(HeadConfig(12, 10, 200, 64, 8)).proxies.std()) == pytest.approx(1 / 8, rel=0.05)


def test_optimiser_schedule_and_defaults_are_the_authors():
    cfg = training.TrainConfig.from_dict(dict(dnph.METHOD.training_defaults, epochs=10))
    assert (cfg.lr, cfg.weight_decay, cfg.batch_size) == (1e-3, 0.2, 64)  # utils/get_args.py
    assert "epochs" not in dnph.METHOD.training_defaults
    params = dnph.METHOD.make_params(None)
    assert (params.margin, params.uniform_weight, params.warmup_proportion) == (1.0, 0.1, 0.1)
    model = small_model()
    (opt,) = dnph.METHOD.optimizers(model, cfg, params)
    assert isinstance(opt, torch.optim.AdamW)  # BertAdam's decoupled decay (docs/methods.md)
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-6
    assert {(g["lr"], g["weight_decay"]) for g in opt.param_groups} == {(1e-3, 0.2)}
    # image trunk and hash layer; text trunk and hash layer; the two classifiers: every parameter once
    grouped = [p for g in opt.param_groups for p in g["params"]]
    assert len(grouped) == len({id(p) for p in grouped}) == len(list(model.parameters()))
    assert [len(g["params"]) for g in opt.param_groups] == [4, 4, 4]
    assert {id(p) for p in opt.param_groups[0]["params"]} == {
        id(p) for m in (model.image_trunk, model.image_hash) for p in m.parameters()}
    # warm-up over the first 10% of all steps, then cosine (train/hash_train.py: BertAdam warmup_cosine)
    assert dnph.METHOD.lr_scale(cfg, params, 0.5) == pytest.approx(0.5)
    assert dnph.METHOD.lr_scale(cfg, params, 1.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.1)))
    assert dnph.METHOD.lr_scale(cfg, params, 9.999) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="unknown parameters of method model 'dnph' \\['alpha'\\]"):
        dnph.METHOD.make_params({"alpha": 1})


# --------------------------------------------------------------------------- end to end

PARAMS = dict(epochs=15, batch_size=32, feature_dim=32, lr=1e-2, dropout=0.0, seed=0)


@pytest.mark.parametrize("text", ["bow", "clip"])
def test_dnph_trains_saves_and_encodes(separable_files, tmp_path, text):
    result, score = train_rebuild_encode(separable_files, tmp_path, "dnph", text, PARAMS)
    # measured 0.91 (bow), 0.93 (clip) vs 0.41 for random codes
    assert score > random_codes_map(separable_files) + 0.3
    # the proxies end as they were drawn when the run was built
    files = separable_files
    run = training.prepare_run(files["pairs"], files["features"], files["graph"], "dnph", BITS, PARAMS,
                               spec={"text": text})
    assert torch.equal(result["state_dict"]["proxies"], training.start_training(run).model.proxies)


def test_interrupted_run_resumes_to_the_same_weights(separable_files, tmp_path, monkeypatch):
    # every batch draws its random vertices from torch's generator: killed in epoch 2, the resumed
    # run must take the generator's state from the checkpoint (the global RNG is scrambled before it)
    params = {**PARAMS, "epochs": 3, "dropout": 0.1}
    assert_resumes_like_an_uninterrupted_run(
        lambda out: train_separable(separable_files, out, "dnph", "bow", params), tmp_path, monkeypatch,
        StatelessObjective, epoch=2)
