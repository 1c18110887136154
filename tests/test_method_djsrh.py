"""Tests for DJSRH (egath.methods.djsrh): the joint-semantics affinity and the reconstruction loss
on hand-computed cases and against brute-force loops (value and gradient), label-free training,
the epoch-wise tanh sharpness, the authors' optimisers, and a run trained end to end, rebuilt from
model.pt, encoded, and resumed after an interruption.

The resume check and the model, optimiser and gradient helpers serve tests/test_method_jdsh.py too."""

import math

import pytest
import torch

from egath import training
from egath.methods import djsrh
from egath.methods.base import binarize
from separable import (BITS, assert_grad_close, assert_resumes_like_an_uninterrupted_run, random_codes_map,
                       train_rebuild_encode, train_separable)

SQRT_HALF = math.sqrt(0.5)


def features(n, d, seed, dtype=torch.float64):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --------------------------------------------------------------------------- hand-computed cases

def test_cosine_affinity_by_hand():
    # (1, 0) and (2, 2): cosine 1/sqrt(2) -> 2/sqrt(2) - 1 = 0.414214; a sample with itself: 1
    s = djsrh.cosine_affinity(torch.tensor([[1.0, 0.0], [2.0, 2.0]]))
    torch.testing.assert_close(s, torch.tensor([[1.0, 2 * SQRT_HALF - 1], [2 * SQRT_HALF - 1, 1.0]]))


def test_signed_features_keep_their_cosine():
    # centred features: (1, 0) and (-1, 1) at cosine -1/sqrt(2), already on [-1, 1]
    x = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    assert djsrh.takes_both_signs(x) and not djsrh.takes_both_signs(x.abs())
    torch.testing.assert_close(djsrh.cosine_affinity(x, signed=True),
                               torch.tensor([[1.0, -SQRT_HALF], [-SQRT_HALF, 1.0]]))


def test_joint_semantics_affinity_by_hand():
    # images e1, e2: S_I = [[1, -1], [-1, 1]]; texts equal: S_T = ones.
    # beta 0.9: S~ = 0.9 S_I + 0.1 = [[1, -0.8], [-0.8, 1]]; S~ S~^T / 2 = [[0.82, -0.8], [-0.8, 0.82]]
    # eta 0.4: 0.6 S~ + 0.4 S~S~^T/2 = [[0.928, -0.8], [-0.8, 0.928]]; mu 1.5: [[1.392, -1.2], [-1.2, 1.392]]
    s = djsrh.joint_semantics_affinity(torch.eye(2), torch.tensor([[1.0, 3.0], [2.0, 6.0]]), beta=0.9, eta=0.4, mu=1.5)
    torch.testing.assert_close(s, torch.tensor([[1.392, -1.2], [-1.2, 1.392]]))


def test_djsrh_loss_by_hand():
    # image codes e1, e2: C_II = I; text codes both e1: C_TT = ones, C_IT = [[1, 1], [0, 0]]. Target S = I:
    # mse(C_II) = 0; mse(C_IT) = (0 + 1 + 0 + 1) / 4 = 0.5; mse(C_TT) = (0 + 1 + 1 + 0) / 4 = 0.5
    # total = 0.1 * 0 + 0.5 + 0.1 * 0.5 = 0.55
    terms = djsrh.djsrh_loss(torch.eye(2), torch.tensor([[0.5, 0.0], [0.9, 0.0]]), torch.eye(2), 0.1, 0.1)
    assert float(terms["image_image"]) == 0
    assert float(terms["image_text"]) == pytest.approx(0.5)
    assert float(terms["text_text"]) == pytest.approx(0.5)
    assert float(terms["total"]) == pytest.approx(0.55)


# --------------------------------------------------------------------------- brute force

def brute_force_djsrh(image, text, h_image, h_text, p, image_set, text_set):
    def cos(a, b):
        return (a * b).sum() / (a.norm() * b.norm())

    def affinity(x, i, j, training_set):
        # the authors' 2 cos - 1 for non-negative features; the cosine itself for signed ones
        return cos(x[i], x[j]) if (training_set < 0).any() else 2 * cos(x[i], x[j]) - 1

    n = image.shape[0]
    s_tilde = [[p.beta * affinity(image, i, j, image_set) + (1 - p.beta) * affinity(text, i, j, text_set)
                for j in range(n)] for i in range(n)]
    total = h_image.new_zeros(())
    for i in range(n):
        for j in range(n):
            second = sum(s_tilde[i][k] * s_tilde[j][k] for k in range(n)) / n
            s = p.mu * ((1 - p.eta) * s_tilde[i][j] + p.eta * second)
            total = total + (p.lambda1 * (cos(h_image[i], h_image[j]) - s) ** 2
                             + (cos(h_image[i], h_text[j]) - s) ** 2
                             + p.lambda2 * (cos(h_text[i], h_text[j]) - s) ** 2) / n ** 2
    return total


def test_djsrh_objective_matches_brute_force_value_and_gradient():
    data = training.TrainingData(features(9, 5, 0), features(9, 4, 1).abs(), torch.zeros(9, 3))
    params = djsrh.DjsrhParams(beta=0.7, eta=0.4, mu=1.5, lambda1=0.3, lambda2=0.2)
    objective = djsrh.DjsrhObjective(model=None, features=(data.image, data.text), params=params)
    index = torch.tensor([7, 2, 4, 0, 5])
    h_image = features(5, 6, 2).tanh().requires_grad_()
    h_text = features(5, 6, 3).tanh().requires_grad_()
    fast = objective.loss({"h_image": h_image, "h_text": h_text}, data.labels[index], index)["total"]
    # signed image features, non-negative text features: both maps of the cosine
    slow = brute_force_djsrh(data.image[index], data.text[index], h_image, h_text, params, data.image, data.text)
    torch.testing.assert_close(fast, slow)
    assert_grad_close(fast, slow, (h_image, h_text))


def test_loss_reads_no_labels():
    data = training.TrainingData(features(8, 5, 0), features(8, 4, 1), torch.eye(4).repeat(2, 1))
    objective = djsrh.DjsrhObjective(None, (data.image, data.text), djsrh.DjsrhParams())
    index = torch.arange(8)
    out = {"h_image": features(8, 6, 2).tanh(), "h_text": features(8, 6, 3).tanh()}
    shuffled = data.labels[torch.randperm(8, generator=torch.Generator().manual_seed(0))]
    assert not torch.equal(shuffled, data.labels)
    a, b = objective.loss(out, data.labels, index), objective.loss(out, shuffled, index)
    assert all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- model, sharpness, optimisers

def model_for(method, feature_dim=16, image_dim=10, text_dim=7):
    cfg = training.TrainConfig.from_dict({**method.training_defaults, "feature_dim": feature_dim})
    data = training.TrainingData(torch.zeros(3, image_dim), torch.zeros(3, text_dim), torch.zeros(3, 2))
    params = method.make_params({})
    model, objective = method.build(BITS, cfg, params, data, None)
    return cfg, params, model, objective


def test_djsrh_networks_follow_the_authors_layers():
    _, _, model, _ = model_for(djsrh.METHOD)
    image_layers = [m for m in model.image_net.modules() if isinstance(m, torch.nn.Linear)]
    text_layers = [m for m in model.text_net.modules() if isinstance(m, torch.nn.Linear)]
    # a trunk (for AlexNet's fc6-fc7) and the hash layer; TxtNet: fc1 (V -> hidden), fc2 (hidden -> K)
    assert [(m.in_features, m.out_features) for m in image_layers] == [(10, 16), (16, BITS)]
    assert [(m.in_features, m.out_features) for m in text_layers] == [(7, 16), (16, BITS)]
    assert model.cfg.dropout == 0.5  # AlexNet's classifier dropout, the authors' default here


def test_sharpness_grows_with_the_epoch_and_resumes():
    _, _, model, objective = model_for(djsrh.METHOD)
    x = torch.full((1, 10), 0.3)
    for epoch in range(3):
        objective.begin_phase(None)
        assert model.sharpness == pytest.approx(math.sqrt(epoch + 1))  # models.py set_alpha
        objective.end_epoch(None, None)
    resumed = model_for(djsrh.METHOD)[3]
    resumed.load_state_dict(objective.state_dict())
    resumed.begin_phase(None)
    assert resumed.model.sharpness == pytest.approx(2.0)  # sqrt(3 + 1)
    # the sharpness scales h, never its sign (the code)
    model.eval()
    model.sharpness = 1.0
    low = model.encode_image(x)
    model.sharpness = 3.0
    high = model.encode_image(x)
    assert torch.equal(binarize(low), binarize(high)) and high.abs().sum() > low.abs().sum()


def assert_sgd_per_network(method, image_lr, text_lr):
    """Two SGD optimisers, the image net's and the text net's parameters, at the authors' rates."""
    cfg, params, model, _ = model_for(method)
    optimizers = method.optimizers(model, cfg, params)
    assert [type(o) for o in optimizers] == [torch.optim.SGD, torch.optim.SGD]
    groups = [g for o in optimizers for g in o.param_groups]
    assert len(groups) == 2
    assert [g["lr"] for g in groups] == pytest.approx([image_lr, text_lr])
    assert all(g["momentum"] == 0.9 and g["weight_decay"] == 5e-4 for g in groups)
    assert [set(map(id, g["params"])) for g in groups] == [set(map(id, model.image_net.parameters())),
                                                          set(map(id, model.text_net.parameters()))]
    assert all(method.lr_scale(cfg, params, progress) == 1.0 for progress in (0.0, 3.5, 79.9))  # no schedule
    assert cfg.batch_size == 32


def test_djsrh_optimizers_are_the_authors():
    # settings.py (MIRFlickr): LR_IMG 0.001, LR_TXT 0.01, MOMENTUM 0.9, WEIGHT_DECAY 5e-4, constant
    assert_sgd_per_network(djsrh.METHOD, image_lr=1e-3, text_lr=1e-2)


# --------------------------------------------------------------------------- end to end

PARAMS = dict(epochs=20, feature_dim=32, seed=0)  # the authors' lr, batch size, dropout otherwise


@pytest.mark.parametrize("text", ["clip", "bow"])
def test_djsrh_trains_saves_and_encodes(separable_files, tmp_path, text):
    _, score = train_rebuild_encode(separable_files, tmp_path, "djsrh", text, PARAMS)
    # unsupervised, on clustered features: measured 0.82 (clip) and 0.80 (bow) against 0.41 for random
    # codes (seeds 1 and 2: 0.73-0.81)
    assert score > random_codes_map(separable_files) + 0.25


def assert_resumes_to_the_same_weights(files, tmp_path, monkeypatch, model):
    """Killed in epoch 2 and started again, a run ends as an uninterrupted one: the optimiser state
    and the epoch count (the sharpness) resume."""
    params = {**PARAMS, "epochs": 3}
    ckpt = assert_resumes_like_an_uninterrupted_run(lambda out: train_separable(files, out, model, "bow", params),
                                                    tmp_path, monkeypatch, djsrh.AffinityReconstruction)
    assert ckpt["objective"] == {"epoch": 1}


def test_djsrh_resumes(separable_files, tmp_path, monkeypatch):
    assert_resumes_to_the_same_weights(separable_files, tmp_path, monkeypatch, "djsrh")
