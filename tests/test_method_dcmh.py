"""Tests for DCMH (egath.methods.dcmh): its batch loss by hand and against the whole-set objective J
written as loops (value, and the gradient the authors' code back-propagates), the alternating
passes, the stored F, G and B, its SGD optimisers, schedule and init, training end to end on the
separable problem, and resume."""

import math

import numpy as np
import pytest
import torch

from egath.inputs import InputForm

from egath import training
from egath.methods import dcmh
from separable import assert_resumes_like_an_uninterrupted_run, random_codes_map, train_rebuild_encode, train_separable


# --------------------------------------------------------------------------- the loss

def test_batch_loss_by_hand():
    # own (1, 2) = (1, 0); other rows (2, 0), (0, 2): theta = (1, 0); S = (1, 0)
    # likelihood: log(1 + e) - 1 + log 2 = 0.313262 + 0.693147 = 1.006409
    # quantization: ||(1, -1) - (1, 0)||^2 = 1;  balance: ||(1, 0) + (0.5, 0.5)||^2 = 2.5
    # normaliser 2, gamma 2, eta 0.5: 0.503204 + 2 * 0.5 + 0.5 * 1.25 = 2.128204
    terms = dcmh.dcmh_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0], [0.0, 2.0]]),
                           torch.tensor([0.5, 0.5]), torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, -1.0]]),
                           gamma=2.0, eta=0.5, normaliser=2.0)
    likelihood = math.log(1 + math.e) - 1 + math.log(2)
    assert float(terms["likelihood"]) == pytest.approx(likelihood / 2)
    assert float(terms["quantization"]) == pytest.approx(0.5)
    assert float(terms["balance"]) == pytest.approx(1.25)
    assert float(terms["total"]) == pytest.approx(likelihood / 2 + 1 + 0.625)


def brute_force_j(F, G, B, S, gamma, eta):
    """The whole-set objective (the authors' calc_loss) as loops over pairs, rows and bits."""
    n, k = F.shape
    total = F.new_zeros(())
    for i in range(n):
        for j in range(n):
            theta = 0.5 * (F[i] * G[j]).sum()
            total = total + torch.log(1 + torch.exp(theta)) - S[i, j] * theta
    for i in range(n):
        total = total + gamma * (((B[i] - F[i]) ** 2).sum() + ((B[i] - G[i]) ** 2).sum())
    for b in range(k):
        total = total + eta * (sum(F[i, b] for i in range(n)) ** 2 + sum(G[i, b] for i in range(n)) ** 2)
    return total


def brute_force_batch_part(own, other, own_all, index, S, codes, gamma, eta, normaliser):
    """The terms of J that the batch's rows enter, as loops, own_all's rows `index` replaced by own."""
    rows = list(index.tolist())
    n, k = own_all.shape
    total = own.new_zeros(())
    for a, i in enumerate(rows):
        for j in range(n):
            theta = 0.5 * (own[a] * other[j]).sum()
            total = total + torch.log(1 + torch.exp(theta)) - S[i, j] * theta
        total = total + gamma * ((codes[a] - own[a]) ** 2).sum()
    for b in range(k):
        column = sum(own[rows.index(i), b] if i in rows else own_all[i, b] for i in range(n))
        total = total + eta * column ** 2
    return total / normaliser


def small_problem(n=6, bits=3):
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 0], [0, 0, 1], [1, 0, 1]],
                          dtype=torch.float64)[:n]
    F = torch.randn(n, bits, generator=g, dtype=torch.float64)
    G = torch.randn(n, bits, generator=g, dtype=torch.float64)
    B = torch.randn(n, bits, generator=g, dtype=torch.float64).sign()
    return labels, F, G, B


@pytest.mark.parametrize("phase", ["image", "text"])
def test_objective_matches_brute_force_value_and_gradient(phase):
    labels, F, G, B = small_problem()
    gamma, eta, batch_size = 1.5, 0.7, 4
    objective = dcmh.DcmhObjective(labels, 3, dcmh.DcmhParams(gamma=gamma, eta=eta), batch_size, seed=0)
    objective.F, objective.G, objective.B = F.clone(), G.clone(), B.clone()
    objective.begin_phase(phase)
    index = torch.tensor([4, 1, 2])  # a last batch, smaller than batch_size: the normaliser stays batch_size * N
    own = (torch.randn(3, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
           .requires_grad_())
    dummy = torch.zeros(3, 3, dtype=torch.float64)
    out = {"f": own, "g": dummy} if phase == "image" else {"f": dummy, "g": own}
    terms = objective.loss(out, labels[index], index)

    own_all, other = (F, G) if phase == "image" else (G, F)
    S = (labels @ labels.T > 0).double()
    normaliser = batch_size * labels.shape[0]
    slow = brute_force_batch_part(own, other, own_all, index, S, B[index], gamma, eta, normaliser)
    torch.testing.assert_close(terms["total"], slow)
    fast_grad, = torch.autograd.grad(terms["total"], own)
    torch.testing.assert_close(fast_grad, torch.autograd.grad(slow, own)[0], rtol=1e-9, atol=1e-12)

    # the authors' gradient: dJ/d(own rows) of the whole-set objective, over batch_size * N
    full = own_all.clone()
    full[index] = own.detach()
    full.requires_grad_()
    j = brute_force_j(full, G, B, S, gamma, eta) if phase == "image" else brute_force_j(F, full, B, S, gamma, eta)
    authors, = torch.autograd.grad(j, full)
    torch.testing.assert_close(fast_grad, authors[index] / normaliser, rtol=1e-9, atol=1e-12)

    # the batch's outputs now stand in the stored set; the other modality is untouched
    stored, untouched = (objective.F, objective.G) if phase == "image" else (objective.G, objective.F)
    torch.testing.assert_close(stored[index], own.detach())
    assert torch.equal(untouched, other)


def test_b_is_the_sign_of_f_plus_g_after_each_epoch():
    labels, F, G, B = small_problem()
    objective = dcmh.DcmhObjective(labels, 3, dcmh.DcmhParams(), 4, seed=0)
    # initial F, G standard normal, B = sign(F + G)
    assert torch.equal(objective.B, torch.where(objective.F + objective.G >= 0, 1.0, -1.0))
    objective.F, objective.G = F, G
    stats = objective.end_epoch(torch.zeros(6, 3), torch.zeros(6, 3))
    assert torch.equal(objective.B, torch.where(F + G >= 0, 1.0, -1.0).double())
    state = objective.state_dict()
    other = dcmh.DcmhObjective(labels, 3, dcmh.DcmhParams(), 4, seed=1)
    other.load_state_dict(state)
    assert all(torch.equal(getattr(other, k), getattr(objective, k)) for k in ("F", "G", "B"))
    assert 0 <= float(stats["code_flip_rate"]) <= 1


# --------------------------------------------------------------------------- optimisers, passes, init

def small_build(bits=8):
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(10, 3, generator=g) < 0.5).float()
    data = training.TrainingData(torch.randn(10, 6, generator=g), torch.randn(10, 5, generator=g) + 3, labels)
    cfg = training.TrainConfig.from_dict({**dcmh.METHOD.training_defaults, "feature_dim": 16, "batch_size": 4})
    params = dcmh.METHOD.make_params({"text_hidden": 2048})
    model, objective = dcmh.METHOD.build(bits, cfg, params, data, None)
    return model, objective, cfg, params, data


def test_authors_optimisers_schedule_and_defaults():
    model, _, cfg, params, _ = small_build()
    defaults = training.TrainConfig.from_dict(dict(dcmh.METHOD.training_defaults))
    # DCMH_demo.m: lr logspace(-1.5, -3), batch 128; update_net.m: SGD with weight decay 5e-4
    assert (defaults.lr, defaults.lr_min, defaults.batch_size) == (10 ** -1.5, 1e-3, 128)
    assert (defaults.weight_decay, defaults.feature_dim, defaults.dropout) == (5e-4, 4096, 0.0)
    assert dcmh.DcmhParams() == dcmh.DcmhParams(gamma=1.0, eta=1.0, text_hidden=8192)
    assert "epochs" not in dcmh.METHOD.training_defaults

    optimizers = dcmh.METHOD.optimizers(model, cfg, params)
    assert len(optimizers) == 2 and all(type(opt) is torch.optim.SGD for opt in optimizers)
    for opt, net in zip(optimizers, (model.image_net, model.text_net)):
        (group,) = opt.param_groups
        assert group["lr"] == 10 ** -1.5 and group["weight_decay"] == 5e-4
        assert group["momentum"] == 0 and not group["nesterov"]
        assert {id(p) for p in group["params"]} == {id(p) for p in net.parameters()}

    # one lr per epoch, logspace(-1.5, -3, epochs): the last epoch trains at 1e-3
    cfg500 = training.TrainConfig.from_dict({**dcmh.METHOD.training_defaults, "epochs": 500})
    want = np.logspace(-1.5, -3, 500)
    for progress, epoch in ((0.0, 0), (0.7, 0), (1.0, 1), (250.5, 250), (499.9, 499)):
        assert dcmh.METHOD.lr_scale(cfg500, params, progress) * cfg500.lr == pytest.approx(want[epoch])


def test_authors_init_and_standardised_inputs():
    model, _, _, _, data = small_build()
    # weights and biases of the text MLP and of fc8 drawn from N(0, 0.01^2)
    text_first = model.text_net[0]
    assert text_first.weight.shape == (2048, 5)
    assert float(text_first.weight.detach().std()) == pytest.approx(0.01, rel=0.05)
    assert float(text_first.bias.detach().std()) == pytest.approx(0.01, rel=0.1)
    assert float(model.image_net[-1].weight.detach().std()) == pytest.approx(0.01, rel=0.2)
    # its 0.01 init and rates assume inputs of fc7's size, not unit-length CLIP features
    assert dcmh.METHOD.inputs == InputForm(image="standardise", text="standardise")
    with torch.no_grad():
        h = model.encode_image(data.image)
    assert h.abs().max() < 1 and torch.equal(h > 0, model.image_output(data.image) > 0)


def test_each_pass_moves_only_its_network():
    model, objective, cfg, params, data = small_build()
    optimizers = dcmh.METHOD.optimizers(model, cfg, params)
    index = torch.tensor([0, 3, 5, 7])
    for phase, moved, kept in (("image", model.image_net, model.text_net), ("text", model.text_net, model.image_net)):
        objective.begin_phase(phase)
        before = {name: [p.detach().clone() for p in net.parameters()] for name, net in (("moved", moved), ("kept", kept))}
        terms = objective.loss(model(data.image[index], data.text[index]), data.labels[index], index)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        for opt in optimizers:
            opt.step()
        # weight decay included: the network whose pass it is not stays exactly as it was
        assert all(torch.equal(a, b) for a, b in zip(before["kept"], kept.parameters()))
        assert not all(torch.equal(a, b) for a, b in zip(before["moved"], moved.parameters()))


# --------------------------------------------------------------------------- end to end

# DCMH's authors' lr is for 500 epochs; 30 epochs on 64 pairs need a larger one
PARAMS = dict(epochs=30, batch_size=16, feature_dim=32, lr=0.1, lr_min=0.01, seed=0)


def test_trains_saves_and_encodes_above_chance(separable_files, tmp_path):
    _, score = train_rebuild_encode(separable_files, tmp_path, "dcmh", "bow", PARAMS)
    assert score > random_codes_map(separable_files) + 0.3  # measured 0.831 vs 0.406


def test_interrupted_run_resumes_to_the_same_state(separable_files, tmp_path, monkeypatch):
    params = {**PARAMS, "epochs": 3}
    ckpt = assert_resumes_like_an_uninterrupted_run(
        lambda out: train_separable(separable_files, out, "dcmh", "bow", params), tmp_path, monkeypatch,
        dcmh.DcmhObjective)
    assert set(ckpt["objective"]) == {"F", "G", "B"}
