"""Tests for DNpH (egath.methods.dnph_tmm): the QSMI loss on hand-computed cases and against a
brute-force loop (value and gradient), the hash layer, optimiser and schedule as the authors' code
has them, and training end to end on the separable problem, rebuilt, encoded and resumed."""

import math

import pytest
import torch

from egath import training
from egath.inputs import TransformedInputs
from egath.methods import dnph_tmm, load_method, model_from_checkpoint
from egath.methods.base import HeadConfig, StatelessObjective
from separable import (assert_grad_close, assert_resumes_like_an_uninterrupted_run, random_codes_map,
                       train_rebuild_encode, train_separable)


# --------------------------------------------------------------------------- the loss by hand

def test_qsmi_loss_by_hand():
    # two samples, labels [1, 0] and [0, 1]: D = I, 1/M = sum D / B^2 = 2/4 = 0.5.
    # images (3, 4), (1, 0) -> unit (0.6, 0.8), (1, 0); texts (0, 2), (1, 0) -> (0, 1), (1, 0).
    # Y = (1 + cos) / 2:  image-image [[1, 0.8], [0.8, 1]]; text-text [[1, 0.5], [0.5, 1]];
    # image-text [[0.9, 0.8], [0.5, 1]].
    # within: each non-neighbour pair (off the diagonal) adds (0 - 1)^2 = 1, each neighbour (Y - 1)^2:
    #   I-I 0 + 0 + 1 + 1 = 2; T-T 2; I-T (0.9 - 1)^2 + 0 + 1 + 1 = 2.01; sum 6.01
    # between: 0.5 * sum Y^2: I-I 0.5 * (1 + 1 + 0.64 + 0.64) = 1.64; T-T 0.5 * 2.5 = 1.25;
    #   I-T 0.5 * (0.81 + 0.64 + 0.25 + 1) = 1.35; sum 4.24
    out = {"h_image": torch.tensor([[3.0, 4.0], [1.0, 0.0]]), "h_text": torch.tensor([[0.0, 2.0], [1.0, 0.0]])}
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    terms = dnph_tmm.qsmi_loss(out, labels)
    assert float(terms["within"]) == pytest.approx(6.01)
    assert float(terms["between"]) == pytest.approx(4.24)
    assert float(terms["total"]) == pytest.approx(10.25)
    # the weight scales the between term only
    terms = dnph_tmm.qsmi_loss(out, labels, between_weight=2.0)
    assert (float(terms["within"]), float(terms["between"])) == pytest.approx((6.01, 8.48))


def test_qsmi_share_of_neighbours_weighs_the_between_term():
    # all three samples share label 0: D = 1 everywhere, 1/M = 1. Codes (1, 0), (0, 1), (-1, 0):
    # Y over the 9 pairs (each modality the same codes): 1, 0.5, 0, / 0.5, 1, 0.5, / 0, 0.5, 1.
    # within = sum (Y - 1)^2 = 4 * 0.25 + 2 * 1 = 3 per matrix; between = sum Y^2 = 3 + 4 * 0.25 = 4
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    terms = dnph_tmm.qsmi_loss({"h_image": h, "h_text": h}, torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0]]))
    assert (float(terms["within"]), float(terms["between"])) == pytest.approx((9.0, 12.0))


def brute_force_qsmi(h_i, h_t, labels, between_weight):
    """The authors' formula with plain loops: every (i, j) of the three similarity matrices."""
    n = labels.shape[0]

    def y(a, b):
        return 0.5 * (1 + (a * b).sum() / ((a.norm() + 1e-8) * (b.norm() + 1e-8)))

    d = [[1.0 if float(labels[i] @ labels[j]) > 0 else 0.0 for j in range(n)] for i in range(n)]
    inverse_m = sum(map(sum, d)) / n ** 2
    total = h_i.new_zeros(())
    for a, b in ((h_i, h_i), (h_t, h_t), (h_i, h_t)):
        for i in range(n):
            for j in range(n):
                s = y(a[i], b[j])
                total = total + (d[i][j] * s - 1) ** 2 + between_weight * inverse_m * s ** 2
    return total


def test_qsmi_loss_matches_brute_force_value_and_gradient():
    g = torch.Generator().manual_seed(0)
    h_i = torch.randn(6, 5, generator=g, dtype=torch.float64).tanh().requires_grad_()
    h_t = torch.randn(6, 5, generator=g, dtype=torch.float64).tanh().requires_grad_()
    labels = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0],
                           [0, 0, 0, 1], [0, 1, 1, 0], [0, 0, 0, 1]], dtype=torch.float64)
    terms = dnph_tmm.qsmi_loss({"h_image": h_i, "h_text": h_t}, labels, between_weight=0.7)
    slow = brute_force_qsmi(h_i, h_t, labels, 0.7)
    torch.testing.assert_close(terms["total"], slow)
    assert_grad_close(terms["total"], slow, (h_i, h_t))


# --------------------------------------------------------------------------- the authors' layers and optimiser

def _model(bits=64):
    return dnph_tmm.DNpH(HeadConfig(image_dim=32, text_dim=20, n_labels=5, bits=bits, hidden_dim=16))


def test_hash_layer_is_linear_dropout_tanh_with_pytorch_default_init():
    torch.manual_seed(0)
    model = _model()
    trunk, hash_layer = model.image_net
    assert hash_layer.dropout.p == 0.2  # model/hash_model.py LinearHash
    # nn.Linear's default init, bound 1/sqrt(fan_in) = 0.25 (the authors' kaiming line is commented
    # out; kaiming_uniform with fan_out = 64 would reach sqrt(6 / 64) = 0.306)
    assert 0.9 * 0.25 < float(hash_layer.fc.weight.detach().abs().max()) <= 0.25
    model.eval()
    with torch.no_grad():
        h = model.encode_text(torch.randn(7, 20))
    assert h.shape == (7, 64) and float(h.abs().max()) < 1
    out = model(torch.randn(3, 32), torch.randn(3, 20))
    assert set(out) == {"h_image", "h_text"} and out["h_image"].shape == (3, 64)


def test_trains_with_its_authors_optimiser_and_schedule():
    method = load_method("dnph-tmm")
    assert method.kind == "supervised" and method.source == "QinLab-WFU/DNpH"
    cfg = training.TrainConfig.from_dict(dict(method.training_defaults, epochs=10))
    assert (cfg.lr, cfg.weight_decay, cfg.batch_size) == (1e-3, 0.2, 64)  # utils/get_args.py
    model, params = _model(), method.make_params(None)
    (opt,) = method.optimizers(model, cfg, params)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-6
    assert [g["weight_decay"] for g in opt.param_groups] == [0.2, 0.2]
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-3]
    # two groups, image and text, the trunks in them at the hash layers' rate: every parameter once
    assert [len(g["params"]) for g in opt.param_groups] == [4, 4]
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}
    # BertAdam's warmup_cosine over all steps: linear over the first 10 %, then cosine
    assert method.lr_scale(cfg, params, 0.5) == pytest.approx(0.5)
    assert method.lr_scale(cfg, params, 1.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.1)))
    assert method.lr_scale(cfg, params, 9.999) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"unknown parameters of method model 'dnph-tmm' \['alpha'\]"):
        method.make_params({"alpha": 1})


# --------------------------------------------------------------------------- end to end

PARAMS = dict(epochs=15, batch_size=32, feature_dim=32, lr=1e-2, dropout=0.0, seed=0)


@pytest.mark.parametrize("text", ["bow", "clip"])
def test_trains_rebuilds_encodes_and_beats_chance(separable_files, tmp_path, text):
    _, score = train_rebuild_encode(separable_files, tmp_path, "dnph-tmm", text, PARAMS)
    rebuilt = model_from_checkpoint(torch.load(tmp_path / "model.pt", weights_only=False))
    assert isinstance(rebuilt, TransformedInputs) and isinstance(rebuilt.model, dnph_tmm.DNpH)
    # measured 0.88 (bow), 0.94 (clip) against 0.41 for random codes
    assert score > random_codes_map(separable_files) + 0.3


def test_interrupted_run_resumes_to_the_same_weights(separable_files, tmp_path, monkeypatch):
    # dropout on, so the resumed run must restore the RNG as well as AdamW's moments and the schedule
    params = {**PARAMS, "epochs": 4, "dropout": 0.1}
    assert_resumes_like_an_uninterrupted_run(
        lambda out: train_separable(separable_files, out, "dnph-tmm", "bow", params), tmp_path, monkeypatch,
        StatelessObjective, epoch=2)
