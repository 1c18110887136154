"""Tests for DIMCH (egath.methods.dimch): each loss term on hand-computed cases, the whole loss
against brute-force loops (value and gradient of every term), the instance hash layer and its
init, the optimiser, parameter groups and schedule as the authors' code sets them, and training
end to end on the separable problem, with a resumed run ending as an uninterrupted one."""

import math

import pytest
import torch
import torch.nn.functional as F

from egath import training
from egath.methods import dimch
from egath.methods.base import StatelessObjective
from separable import (assert_grad_close, assert_resumes_like_an_uninterrupted_run, random_codes_map,
                       train_rebuild_encode, train_separable)


# --------------------------------------------------------------------------- the terms by hand

def test_smooth_chamfer_similarity_by_hand():
    # a = {(1, 0), (0, 1)} against itself, t = 2: each instance's LSE over the other set is
    # log(e^2 + e^0); 4 of them / (2 M t = 8): log(e^2 + 1) / 2 = 1.063464 (above 1: LSE > max)
    a = torch.eye(2).unsqueeze(0)  # (1, M = 2, K = 2)
    assert float(dimch.smooth_chamfer_similarity(a, a, 2.0)) == pytest.approx(1.063464, abs=1e-6)
    # {(1, 0), (1, 0)} against {(0, 1), (0, 1)}: every cosine 0, each LSE log 2: log(2) / t = 0.346574
    b = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    c = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])
    assert float(dimch.smooth_chamfer_similarity(b, c, 2.0)) == pytest.approx(math.log(2) / 2)
    # one direction to the best match, the other to all: not symmetric within a pair of sets, but
    # s(y, x) = s(x, y)^T over a batch
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(3, 4, 5, generator=g), dim=-1)
    y = F.normalize(torch.randn(2, 4, 5, generator=g), dim=-1)
    torch.testing.assert_close(dimch.smooth_chamfer_similarity(y, x, 16.0), dimch.smooth_chamfer_similarity(x, y, 16.0).T)


def test_triplet_by_hand():
    # labels: 0 and 1 share label 0, 2 has label 1. NDCG weights: row 0 gains (1, 1, 0), ideal DCG
    # 1 + 1/log2(3), w = 0.613147 for j = 0, 1; row 2: w_22 = 1.
    labels = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    distance = torch.tensor([[0.1, 0.5, 0.35], [0.2, 0.3, 0.9], [0.6, 0.2, 0.0]])
    # margin 0.3: anchor 0: (p 0, n 2) 0.1 - 0.35 + 0.3 = 0.05, (p 1, n 2) 0.45; anchor 1: -0.4, -0.3
    # (inactive); anchor 2: (p 2, n 0) -0.3, (p 2, n 1) 0.1. Three active triplets:
    # (0.613147 * 0.5 + 1 * 0.1) / 3 = 0.135525
    assert float(dimch.dimch_triplet(distance, labels, 0.3)) == pytest.approx(0.135525, abs=1e-6)
    # no active triplet: 0, not 0/0
    assert float(dimch.dimch_triplet(distance, labels, -1.0)) == 0.0
    # an anchor without labels has no relevant item: it weighs 0 (the authors' normaliser is 0/0)
    unlabelled = torch.cat([labels, torch.zeros(1, 2)])
    value = dimch.dimch_triplet(torch.rand(4, 4, generator=torch.Generator().manual_seed(1)), unlabelled, 0.3)
    assert math.isfinite(float(value))


def test_mmd_by_hand():
    # x = {(1, 0)}, y = {(0, 1)}: k(x, x) = k(y, y) = 1, k(x, y) = exp(-0.5 sqrt 2) = 0.493069
    x, y = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert float(dimch.mmd(x, y, 0.5)) == pytest.approx(2 - 2 * math.exp(-0.5 * math.sqrt(2)))
    # the same rows on both sides: 0, and a finite gradient where two rows coincide (their inner
    # products give a squared distance of exactly 0, whose square root has no derivative)
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    value = dimch.mmd(z, z.detach().clone(), 0.5)
    assert float(value.detach()) == pytest.approx(0.0, abs=1e-7)
    (grad,) = torch.autograd.grad(value, z)
    assert torch.isfinite(grad).all()
    # in float32 the inner products leave a row's squared distance to itself at up to 5e-7, whose
    # square root (7e-4) would move k(x, x): the diagonal must be exactly 0, as in a float64 reference
    g = torch.Generator().manual_seed(0)
    x, y = (F.normalize(torch.randn(40, 16, generator=g), dim=1) for _ in range(2))
    reference = sum(sign * torch.exp(-0.5 * torch.cdist(u.double(), v.double())).mean()
                    for sign, u, v in ((1, x, x), (-2, x, y), (1, y, y)))
    assert float(dimch.mmd(x, y, 0.5)) == pytest.approx(float(reference), abs=2e-7)


def test_diversity_counts_every_pair_of_the_batch():
    # two samples of M = 2 instances, flattened: (1, 0), (1, 0) | (0, 1), (0.6, 0.8)
    # pairs: (0, 1) d^2 = 0 -> 1; (0, 3), (1, 3) d^2 = 0.8 -> e^-16; (0, 2), (1, 2) d^2 = 2 -> e^-40;
    # (2, 3) d^2 = 0.4 -> e^-8; sum 1.000336, / (M (M - 1) / 2 = 1). Pairs across the two samples
    # ((0, 3), (1, 2), ...) count, as in the authors' code, which flattens the sets before the call.
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=torch.float64)
    want = 1 + 2 * math.exp(-16) + 2 * math.exp(-40) + math.exp(-8)
    assert float(dimch.diversity(x, 2)) == pytest.approx(want, rel=1e-9)
    assert float(dimch.diversity(x, 4)) == pytest.approx(want / 6, rel=1e-9)  # M = 4: / 6
    assert float(dimch.diversity(x, 1)) == 0.0  # one instance per sample: no diversity to ask for


def test_quantization_and_total_by_hand():
    # two identical samples of one label: no negative, so both triplets are 0; instances equal
    # across the modalities: MMD 0. h = (0.5, -0.5): (h - sign h)^2 = 0.25 per entry.
    e = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]).repeat(2, 1, 1)  # (B 2, M 2, K 2)
    h = torch.tensor([[0.5, -0.5], [0.5, -0.5]])
    out = {"e_image": e, "e_text": e, "h_image": h, "h_text": h}
    params = dimch.DimchParams(set_size=2)
    terms = dimch.dimch_loss(out, torch.ones(2, 1), params)
    assert float(terms["instance_triplet"]) == 0 and float(terms["hash_triplet"]) == 0
    assert float(terms["mmd"]) == pytest.approx(0.0, abs=1e-6)
    assert float(terms["quantization"]) == pytest.approx(0.25)
    # diversity: per modality, 4 instances, the pairs (0, 2), (1, 3) coincide (the two samples
    # are equal) -> 1 each, the 4 orthogonal pairs e^-40: 2 / 1, twice (image and text)
    assert float(terms["diversity"]) == pytest.approx(4.0, rel=1e-6)
    assert float(terms["total"]) == pytest.approx(0.3 * 4.0 + 1.0 * 0.25, rel=1e-6)


# --------------------------------------------------------------------------- brute force

def brute_force_dimch(e_image, e_text, h_image, h_text, labels, p):
    """The authors' terms (models/DIMCH/DIMCH.py, distance/distance.py, loss/triplet_loss.py) with
    plain loops. Returns the terms and the number of active code triplets."""
    n, m, _ = e_image.shape
    xs = [[e_image[a, i] / e_image[a, i].norm() for i in range(m)] for a in range(n)]
    ys = [[e_text[a, i] / e_text[a, i].norm() for i in range(m)] for a in range(n)]

    def set_similarity(x, y):
        t = p.temperature
        from_x = sum(torch.log(sum(torch.exp(t * (u @ v)) for v in y)) for u in x)
        from_y = sum(torch.log(sum(torch.exp(t * (u @ v)) for u in x)) for v in y)
        return (from_x / (m * t) + from_y / (m * t)) / 2

    def triplet(distance, margin):  # distance[a][j], anchors a
        total, active = 0, 0
        for a in range(n):
            counts = [float(labels[a] @ labels[j]) for j in range(n)]
            z = sum((2 ** c - 1) / math.log2(r + 2) for r, c in enumerate(sorted(counts, reverse=True)))
            for pos in range(n):
                for neg in range(n):
                    if counts[pos] > 0 and counts[neg] == 0:
                        term = (2 ** counts[pos] - 1) / z * torch.relu(distance[a][pos] - distance[a][neg] + margin)
                        if float(term.detach()) > 1e-16:
                            total, active = total + term, active + 1
        return total / (active + 1e-16), active

    def clamp(v):
        return torch.clamp(v, min=0)

    i2t = [[clamp(1 - set_similarity(xs[a], ys[b])) for b in range(n)] for a in range(n)]
    t2i = [[clamp(1 - set_similarity(ys[a], xs[b])) for b in range(n)] for a in range(n)]
    cos = [[clamp(1 - h_image[a] @ h_text[b] / (h_image[a].norm() * h_text[b].norm())) for b in range(n)]
           for a in range(n)]
    cos_t = [[cos[b][a] for b in range(n)] for a in range(n)]
    code_i2t, active = triplet(cos, p.hash_margin)

    flat_x, flat_y = [u for s in xs for u in s], [v for s in ys for v in s]

    def kernel_mean(us, vs, same):
        total = 0
        for i, u in enumerate(us):
            for j, v in enumerate(vs):
                total = total + (1.0 if same and i == j else torch.exp(-p.mmd_gamma * (u - v).pow(2).sum().sqrt()))
        return total / (len(us) * len(vs))

    def diversity(us):
        pairs = sum(torch.exp(-20 * (us[i] - us[j]).pow(2).sum()) for i in range(len(us)) for j in range(i + 1, len(us)))
        return pairs / (m * (m - 1) / 2)

    terms = {
        "instance_triplet": (triplet(i2t, p.token_margin)[0] + triplet(t2i, p.token_margin)[0]) / 2,
        "mmd": kernel_mean(flat_x, flat_x, True) - 2 * kernel_mean(flat_x, flat_y, False)
        + kernel_mean(flat_y, flat_y, True),
        "diversity": diversity(flat_x) + diversity(flat_y),
        "hash_triplet": (code_i2t + triplet(cos_t, p.hash_margin)[0]) / 2,
        "quantization": sum(((h - torch.sign(h.detach())) ** 2).mean() for h in (h_image, h_text)) / 2,
    }
    terms["total"] = (p.token_weight * terms["instance_triplet"] + p.mmd_weight * terms["mmd"]
                      + p.diversity_weight * terms["diversity"] + p.hash_weight * terms["hash_triplet"]
                      + p.quantization_weight * terms["quantization"])
    return terms, active


@pytest.fixture
def float64_default():
    # the NDCG discounts (egath.methods.egath.ndcg_weights) are made in the default dtype
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def test_loss_matches_brute_force_value_and_gradient(float64_default):
    g = torch.Generator().manual_seed(0)
    n, m, k = 5, 3, 4
    # each sample's instances near one direction, so that the diversity and MMD kernels are far from 0
    centre = torch.randn(n, 1, k, generator=g, dtype=torch.float64)
    e_i = (centre + 0.3 * torch.randn(n, m, k, generator=g, dtype=torch.float64)).requires_grad_()
    e_t = (centre + 0.3 * torch.randn(n, m, k, generator=g, dtype=torch.float64)).requires_grad_()
    z_i = torch.randn(n, k, generator=g, dtype=torch.float64, requires_grad=True)
    z_t = torch.randn(n, k, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 0], [1, 0, 1]], dtype=torch.float64)
    # every weight and margin other than its default and the others, so that none can stand in for another
    params = dimch.DimchParams(set_size=m, temperature=4.0, token_margin=0.2, hash_margin=0.4, token_weight=7.0,
                               hash_weight=11.0, mmd_weight=3.0, mmd_gamma=0.7, diversity_weight=0.5,
                               quantization_weight=2.0)
    # what each term reads: the instances, the codes, or both
    inputs = {"instance_triplet": (e_i, e_t), "mmd": (e_i, e_t), "diversity": (e_i, e_t),
              "hash_triplet": (z_i, z_t), "quantization": (z_i, z_t), "total": (e_i, e_t, z_i, z_t)}

    def fast():
        return dimch.dimch_loss({"e_image": e_i, "e_text": e_t, "h_image": torch.tanh(z_i),
                                 "h_text": torch.tanh(z_t)}, labels, params)

    terms = fast()
    slow, active = brute_force_dimch(e_i, e_t, torch.tanh(z_i), torch.tanh(z_t), labels, params)
    # of the 26 (anchor, relevant, irrelevant) triplets some are active and some not: both sides of the hinge
    assert 0 < active < 26
    assert float(slow["diversity"].detach()) > 0.1 and float(slow["mmd"].detach()) > 0.01
    assert terms.keys() == slow.keys()
    for name in terms:
        torch.testing.assert_close(terms[name], slow[name])
        # every term's gradient, so that a small weight cannot hide an error in a term
        assert_grad_close(fast()[name], brute_force_dimch(e_i, e_t, torch.tanh(z_i), torch.tanh(z_t), labels,
                                                          params)[0][name], inputs[name])


# --------------------------------------------------------------------------- model, optimiser, schedule

def _model(bits=4, hidden_dim=16, set_size=3):
    return dimch.DIMCH(dimch.DimchConfig(image_dim=6, text_dim=5, n_labels=3, bits=bits, hidden_dim=hidden_dim,
                                         set_size=set_size))


def test_instance_hash_is_tanh_of_the_mean_instance():
    torch.manual_seed(0)
    model = _model().eval()
    assert tuple(model.image_hash.instances.weight.shape) == (3, 1, 3)  # one token in, M = 3 out, width 3
    assert [tuple(layer.weight.shape) for layer in model.image_hash.project
            if isinstance(layer, torch.nn.Linear)] == [(8, 16), (4, 8)]  # F -> F/2 -> K
    image, text = torch.randn(2, 6), torch.randn(2, 5)
    out = model(image, text)
    assert out["e_image"].shape == (2, 3, 4) and out["e_text"].shape == (2, 3, 4)
    torch.testing.assert_close(out["h_image"], torch.tanh(out["e_image"].mean(1)))
    torch.testing.assert_close(model.encode_text(text), torch.tanh(out["e_text"].mean(1)))
    # the M instances differ (their 3-wide filters differ) though they come from one feature vector
    assert (out["e_image"][:, 0] - out["e_image"][:, 1]).abs().max() > 1e-3


def test_init_is_the_authors():
    torch.manual_seed(0)
    hash_layer = _model(bits=64, hidden_dim=512, set_size=2000).image_hash
    # models/common/hash.py weights_init_kaiming: linear layers kaiming_uniform with fan_out
    for layer in (hash_layer.project[0], hash_layer.project[3]):
        bound = math.sqrt(6 / layer.out_features)
        assert 0.95 * bound < layer.weight.abs().max() <= bound
        assert not layer.bias.any()
    # convolutions kaiming_normal with fan_in = 1 channel x 3 taps: std sqrt(2 / 3)
    assert float(hash_layer.instances.weight.detach().std()) == pytest.approx(math.sqrt(2 / 3), rel=0.03)
    assert not hash_layer.instances.bias.any()


def test_optimiser_groups_schedule_and_defaults_are_the_authors():
    method = dimch.METHOD
    cfg = training.TrainConfig.from_dict(dict(method.training_defaults, epochs=10))
    assert (cfg.lr, cfg.weight_decay, cfg.batch_size) == (1e-3, 0.2, 20)  # configs/DIMCH/config.yaml
    assert "epochs" not in method.training_defaults
    params = method.make_params(None)
    assert (params.set_size, params.hash_dropout, params.temperature, params.token_margin, params.hash_margin,
            params.token_weight, params.hash_weight, params.mmd_weight, params.mmd_gamma, params.diversity_weight,
            params.quantization_weight, params.warmup_proportion) == (8, 0.3, 16.0, 0.3, 0.3, 50.0, 50.0, 1.0, 0.5,
                                                                      0.3, 1.0, 0.1)
    model = _model()
    (opt,) = method.optimizers(model, cfg, params)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-6
    # runners/base.py: a backbone group and a hash group; the trunks stand in for the backbone
    backbone, hashing = opt.param_groups
    assert {id(p) for p in backbone["params"]} == {id(p) for net in (model.image_trunk, model.text_trunk)
                                                   for p in net.parameters()}
    assert {id(p) for p in hashing["params"]} == {id(p) for net in (model.image_hash, model.text_hash)
                                                  for p in net.parameters()}
    assert (backbone["lr"], hashing["lr"]) == (1e-3, 1e-3)
    assert (backbone["weight_decay"], hashing["weight_decay"]) == (0.2, 0.2)
    # BertAdam's warmup_cosine over all steps: warm-up over the first 10 %, then cosine
    assert method.lr_scale(cfg, params, 0.5) == pytest.approx(0.5)
    assert method.lr_scale(cfg, params, 1.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.1)))
    assert method.lr_scale(cfg, params, 9.999) == pytest.approx(0.0, abs=1e-6)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="methods.dimch.params.set_size"):
        dimch.METHOD.make_params({"set_size": 0})
    with pytest.raises(ValueError, match="methods.dimch.params.temperature"):
        dimch.METHOD.make_params({"temperature": 0.0})
    with pytest.raises(ValueError, match="training.feature_dim"):
        _model(hidden_dim=1)


# --------------------------------------------------------------------------- end to end

# the baselines' test settings (tests/test_baselines.py): a higher rate than the authors' for 60 steps
PARAMS = dict(epochs=15, feature_dim=64, lr=1e-2, dropout=0.0, seed=0)


@pytest.mark.parametrize("text", ["clip", "bow"])
def test_dimch_trains_saves_and_encodes(separable_files, tmp_path, text):
    _, score = train_rebuild_encode(separable_files, tmp_path, "dimch", text, PARAMS)
    # measured 0.97 (clip) and 0.95 (bow) against 0.41 for random codes (seeds 1 and 2: 0.89-0.98)
    assert score > random_codes_map(separable_files) + 0.25


def test_interrupted_run_resumes_to_the_same_weights(separable_files, tmp_path, monkeypatch):
    # killed in epoch 4 of 4, after the first of the two averaged epochs: the optimiser's moments,
    # the weight average, the schedule's position and the dropout RNG must all resume
    params = {**PARAMS, "epochs": 4, "average_window": 0.5}
    ckpt = assert_resumes_like_an_uninterrupted_run(
        lambda out: train_separable(separable_files, out, "dimch", "clip", params), tmp_path, monkeypatch,
        StatelessObjective, epoch=4)
    assert ckpt["averaged"]["n_averaged"] == 1
