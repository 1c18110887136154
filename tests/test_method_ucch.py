"""Tests for UCCH (egath.methods.ucch): its losses on hand-computed cases and against brute-force loops
(value and gradient), the memory bank (warm-up, momentum update, resume), that no label is read, its
optimiser and schedule as the authors' code has them, and training end to end on the separable problem."""

import math

import pytest
import torch

from egath import training
from egath.methods import ucch
from separable import (assert_grad_close, assert_resumes_like_an_uninterrupted_run, random_codes_map,
                       train_rebuild_encode, train_separable)

R2 = math.sqrt(2)


# --------------------------------------------------------------------------- the losses by hand

def test_ranking_loss_by_hand():
    m, xi = 0.2, 0.1
    # matched pairs identical, the others orthogonal: M = I. Every negative (0) lies outside the
    # margin (0 < 1 - 0.2), so it is lowered to -0.1; each of the 2 + 2 queries costs
    # 0.2 + log(e^1 + e^-0.1) - 1 = 0.2 + log(1 + e^-1.1) = 0.487335; Lr = 2 * 0.487335
    h = torch.eye(2)
    assert float(ucch.ranking_loss(h, h, m, xi)) == pytest.approx(2 * (0.2 + math.log(1 + math.exp(-1.1))))
    # h_I = (1, 0), (0.6, 0.8); h_T = (0.8, 0.6), (0, 1): M = [[0.8, 0], [0.96, 0.8]].
    # image 0: M_01 = 0 < 0.6 -> -0.1: a = 0.2 + log(e^0.8 + e^-0.1) - 0.8 = 0.541154
    # image 1: M_10 = 0.96 >= 0.6 (inside the margin, kept): b = 0.2 + log(e^0.96 + e^0.8) - 0.8 = 0.976344
    # text 0 (column 0): M_10 = 0.96 kept -> b; text 1: M_01 = 0 -> -0.1 -> a.  Lr = (a + b) / 2 * 2
    h_i, h_t = torch.tensor([[1.0, 0.0], [0.6, 0.8]]), torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    assert float(ucch.ranking_loss(h_i, h_t, m, xi)) == pytest.approx(0.541154 + 0.976344, abs=1e-6)


def test_contrastive_term_by_hand():
    # h = (1, 0), positive key (1, 1)/sqrt2, negative (-1, -1)/sqrt2: logits +-0.7071 / 0.9;
    # -log softmax_0 = log(1 + e^(-2 * 0.7071 / 0.9)) = 0.188771
    keys = torch.tensor([[1.0, 1.0], [-1.0, -1.0]]) / R2
    rows = torch.tensor([[0, 1]])
    assert float(ucch.contrastive_term(torch.tensor([[1.0, 0.0]]), keys, rows, 0.9)) == pytest.approx(0.188771, abs=1e-6)
    # a negative as close as the positive: log 2 at any temperature
    keys = torch.tensor([[1.0, 1.0], [1.0, -1.0]]) / R2
    for tau in (0.1, 0.9):
        assert float(ucch.contrastive_term(torch.tensor([[1.0, 0.0]]), keys, rows, tau)) == pytest.approx(math.log(2))


def test_momentum_update_by_hand():
    # v = (1, 0); h_I = (1, 0), h_T = (0, 1): target (1, 1)/sqrt2; 0.4 v + 0.6 target = (0.824264, 0.424264),
    # norm 0.927044 -> (0.889131, 0.457652). Row 1 is not in the batch and stays.
    memory = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    ucch.momentum_update(memory, torch.tensor([0]), torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), 0.4)
    torch.testing.assert_close(memory, torch.tensor([[0.889131, 0.457652], [0.0, 1.0]]), atol=1e-6, rtol=0)


def test_warm_up_uses_the_batch_and_overwrites_the_bank():
    # h_I = h_T = rows (0.6, 0.8), (0.8, -0.6): in-batch keys sgn(h_I + h_T) = (1, 1)/sqrt2, (1, -1)/sqrt2.
    # sample 0: logits 1.4/sqrt2 (own key), -0.2/sqrt2; sample 1: 1.4/sqrt2 (own), 0.2/sqrt2; tau = 0.9:
    # c0 = log(1 + e^((-0.2 - 1.4)/sqrt2/0.9)) = 0.250357, c1 = log(1 + e^((0.2 - 1.4)/sqrt2/0.9)) = 0.328967;
    # Lc = image + text = 2 (c0 + c1) / 2 = 0.579324. M = h h^T = I: Lr = 0.974671 (as in the first hand case).
    params = ucch.UcchParams()
    objective = ucch.UcchObjective(5, 2, params, seed=0, device="cpu")
    h = torch.tensor([[0.6, 0.8], [0.8, -0.6]])
    index = torch.tensor([3, 1])
    generator_before = objective.generator.get_state()
    terms = objective.loss({"h_image": h, "h_text": h}, torch.zeros(2, 3), index)
    assert float(terms["contrastive"]) == pytest.approx(0.579324, abs=1e-6)
    assert float(terms["ranking"]) == pytest.approx(0.974671, abs=1e-6)
    assert float(terms["total"]) == pytest.approx(0.7 * 0.579324 + 0.3 * 0.974671, abs=1e-6)
    torch.testing.assert_close(objective.memory[index], h)  # momentum 0: the outputs themselves
    assert torch.equal(objective.generator.get_state(), generator_before)  # no negatives drawn
    objective.end_epoch(h, h)
    assert objective.epoch == 1  # from now on, keys from the bank


def test_initial_bank_is_the_authors_biased_sign():
    memory = ucch.UcchObjective(4000, 16, ucch.UcchParams(), seed=0, device="cpu").memory
    torch.testing.assert_close(memory.norm(dim=1), torch.ones(4000))
    assert set((memory * 4).round().unique().tolist()) == {-1.0, 1.0}  # +-1/sqrt(16)
    assert float((memory > 0).float().mean()) == pytest.approx(0.3085, abs=0.01)  # P(z > 1/2)


# --------------------------------------------------------------------------- brute force

def brute_force_ucch(h_i, h_t, memory, index, negatives, p):
    """Paper Eq. 3-4, 8, 14, 15 with loops; keys sgn(v) scored by <sgn(v), h> / (tau sqrt(L)) as
    NCE/NCEAverage.py does."""
    n_batch, bits = h_i.shape
    contrastive = h_i.new_zeros(())
    for h in (h_i, h_t):
        for b in range(n_batch):
            keys = [memory[index[b]]] + [memory[j] for j in negatives[b]]
            logits = [(h[b] * torch.sign(k)).sum() / (p.temperature * math.sqrt(bits)) for k in keys]
            contrastive = contrastive - (logits[0] - torch.log(sum(torch.exp(x) for x in logits))) / n_batch
    m = [[(h_i[a] * h_t[b]).sum() for b in range(n_batch)] for a in range(n_batch)]
    ranking = h_i.new_zeros(())
    for q in range(n_batch):  # image query q over the texts, text query q over the images
        for scores in ([m[q][j] for j in range(n_batch)], [m[j][q] for j in range(n_batch)]):
            s = [x if float(x.detach()) >= float(m[q][q].detach()) - p.margin else x - p.shift for x in scores]
            ranking = ranking + (p.margin + torch.log(sum(torch.exp(x) for x in s)) - m[q][q]) / n_batch
    return p.alpha * contrastive + (1 - p.alpha) * ranking


def test_loss_matches_brute_force_value_gradient_and_bank_update():
    g = torch.Generator().manual_seed(0)
    n, n_batch, bits = 9, 5, 6
    params = ucch.UcchParams(negatives=7, margin=0.3, shift=0.5)
    objective = ucch.UcchObjective(n, bits, params, seed=1, device="cpu")
    objective.memory = torch.nn.functional.normalize(torch.randn(n, bits, generator=g, dtype=torch.float64), dim=1)
    objective.epoch = 1  # past the warm-up: keys from the bank
    x_i = torch.randn(n_batch, bits, generator=g, dtype=torch.float64, requires_grad=True)
    x_t = torch.randn(n_batch, bits, generator=g, dtype=torch.float64, requires_grad=True)
    h_i, h_t = ucch.UnitTanh()(x_i), ucch.UnitTanh()(x_t)
    index = torch.tensor([7, 0, 3, 4, 8])
    memory = objective.memory.clone()
    negatives = torch.randint(n, (n_batch, 7), generator=torch.Generator().set_state(objective.generator.get_state()))

    terms = objective.loss({"h_image": h_i, "h_text": h_t}, torch.zeros(n_batch, 2), index)
    slow = brute_force_ucch(h_i, h_t, memory, index, negatives, params)
    # hard and easy negatives both occur, so both branches of the ranking loss are tested
    s = (h_i @ h_t.T).detach()
    inside = s >= s.diagonal()[:, None] - 0.3
    assert inside.sum() > n_batch and not inside.all()
    torch.testing.assert_close(terms["total"], slow)
    torch.testing.assert_close(terms["total"], 0.7 * terms["contrastive"] + 0.3 * terms["ranking"])
    assert_grad_close(terms["total"], slow, (x_i, x_t))

    for row in range(n):
        want = memory[row]
        if row in index.tolist():
            b = index.tolist().index(row)
            target = (h_i[b] + h_t[b]).detach() / (h_i[b] + h_t[b]).detach().norm()
            want = 0.4 * want + 0.6 * target
            want = want / want.norm()
        torch.testing.assert_close(objective.memory[row], want)


def test_loss_reads_no_labels():
    torch.manual_seed(0)
    h_i = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    h_t = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    labels = torch.eye(6, 3).roll(1, 0) + torch.eye(6, 3)
    index = torch.tensor([0, 2, 4, 6, 8, 10])
    results = []
    for given in (labels, labels[torch.randperm(6)], torch.zeros(6, 3)):
        objective = ucch.UcchObjective(12, 8, ucch.UcchParams(negatives=20), seed=3, device="cpu")
        for epoch in range(2):  # warm-up batch, then a batch against the bank
            terms = objective.loss({"h_image": h_i, "h_text": h_t}, given, index)
            objective.end_epoch(h_i, h_t)
        results.append((terms, objective.memory))
    for terms, memory in results[1:]:
        assert all(torch.equal(terms[k], results[0][0][k]) for k in terms)
        assert torch.equal(memory, results[0][1])


# --------------------------------------------------------------------------- model, optimiser, schedule

def test_layers_follow_the_authors_networks():
    model = ucch.UCCH(ucch.UcchConfig(image_dim=6, text_dim=5, bits=4, hidden_dim=16))
    linears = lambda net: [tuple(m.weight.shape) for m in net if isinstance(m, torch.nn.Linear)]
    assert linears(model.image_net) == [(16, 6), (16, 16), (4, 16)]  # ImageNet, 3 layers
    assert linears(model.text_net) == [(16, 5), (4, 16)]  # TextNet, 2 layers
    assert linears(ucch.hash_mlp(6, 16, 4, 1)) == [(4, 6)]  # one layer: straight to the bits
    out = model(torch.randn(3, 6), torch.randn(3, 5))
    for h in out.values():
        torch.testing.assert_close(h.norm(dim=1), torch.ones(3))
        assert h.abs().max() < 1


def test_optimiser_schedule_and_defaults_are_the_authors():
    cfg = training.TrainConfig.from_dict(dict(ucch.METHOD.training_defaults))
    assert (cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.feature_dim) == (1e-4, 1e-6, 256, 8192)
    assert "epochs" not in ucch.METHOD.training_defaults
    params = ucch.UcchParams()
    assert (params.alpha, params.momentum, params.negatives, params.temperature, params.margin,
            params.shift, params.warmup_epochs) == (0.7, 0.4, 4096, 0.9, 0.2, 0.1, 1)
    model = ucch.UCCH(ucch.UcchConfig(image_dim=6, text_dim=5, bits=4, hidden_dim=8))
    (opt,) = ucch.METHOD.optimizers(model, cfg, params)
    assert isinstance(opt, torch.optim.Adam) and len(opt.param_groups) == 1
    group = opt.param_groups[0]
    assert (group["lr"], group["weight_decay"], group["betas"]) == (1e-4, 1e-6, (0.9, 0.999))
    assert {id(p) for p in group["params"]} == {id(p) for p in model.parameters()}
    # both networks' gradients are clipped together to norm 1 before the step
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    opt.step()
    assert float(torch.cat([p.grad.flatten() for p in model.parameters()]).norm()) == pytest.approx(1.0, rel=1e-5)
    # MultiStepLR at 30, 60, 90, 120, stepped with the epoch after each epoch: epoch 30 still at lr
    scale = lambda epoch: ucch.METHOD.lr_scale(cfg, params, epoch + 0.5)
    assert [scale(e) for e in (0, 30, 31, 60, 61, 121)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 1e-4])
    with pytest.raises(ValueError, match="momentum"):
        ucch.METHOD.make_params({"momentum": 1.0})


# --------------------------------------------------------------------------- end to end

PARAMS = dict(epochs=15, batch_size=16, feature_dim=32, lr=1e-3, seed=0)


@pytest.mark.parametrize("text", ["bow", "clip"])
def test_ucch_trains_saves_and_encodes(separable_files, tmp_path, text):
    # epoch 1 contrasts with the batch's 16 keys, later epochs with 4097 from the bank: compare from epoch 2
    _, score = train_rebuild_encode(separable_files, tmp_path, "ucch", text, PARAMS, loss_falls_from=2)
    # unsupervised, but the separable features cluster by label: measured 0.89 (bow), 0.93 (clip) vs 0.41
    assert score > random_codes_map(separable_files) + 0.3


def test_interrupted_run_resumes_to_the_same_weights(separable_files, tmp_path, monkeypatch):
    # the warm-up epoch, then three against the bank; killed in epoch 3, when the bank and the
    # generator of the negatives have both moved since the start. The resumed run must take them
    # from the checkpoint: the global RNG is scrambled before it.
    params = {**PARAMS, "epochs": 4}
    ckpt = assert_resumes_like_an_uninterrupted_run(
        lambda out: train_separable(separable_files, out, "ucch", "clip", params), tmp_path, monkeypatch,
        ucch.UcchObjective, epoch=3)
    assert ckpt["objective"]["epoch"] == 2
