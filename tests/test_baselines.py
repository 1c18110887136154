"""Tests for the baselines (egath.methods.dchmt, dsph, itq): the DCHMT and DSPH losses against hand-computed values and
brute-force loops, DSPH's threshold zeta, PCA-ITQ, and each baseline trained end to end,
saved, rebuilt from model.pt and encoded."""

import math

import numpy as np
import pytest
import torch

from egath.methods import dchmt, dsph, itq
from egath import training
from egath.encoding import encode_dataset
from egath.methods.base import binarize
from egath.methods import MethodSpec
from separable import BITS, assert_grad_close, random_codes_map, retrieval_map, train_rebuild_encode


# --------------------------------------------------------------------------- DCHMT

def test_select_hash_code_is_the_argmax():
    torch.manual_seed(0)
    layer = dchmt.SelectHash(5, 6)
    p = layer(torch.randn(4, 5))
    assert p.shape == (4, 6, 2)
    torch.testing.assert_close(p.sum(-1), torch.ones(4, 6))
    h = dchmt.select_to_code(p)
    assert h.abs().max() < 1
    assert torch.equal(h > 0, p.argmax(-1) == 1)


def test_dchmt_pair_loss_by_hand():
    # one bit: a = (0.2, 0.8), b = (0.6, 0.4): d^2 = 0.16 + 0.16 = 0.32; m = 1
    a, b = torch.tensor([[0.2, 0.8]]), torch.tensor([[0.6, 0.4]])
    pos, neg = dchmt.dchmt_pair_loss(a, b, torch.ones(1, 1), 1.0)
    assert float(pos) == pytest.approx(0.32) and float(neg) == 0
    pos, neg = dchmt.dchmt_pair_loss(a, b, torch.zeros(1, 1), 1.0)
    assert float(pos) == 0 and float(neg) == pytest.approx((1 - math.sqrt(0.32)) ** 2)  # 0.188629
    # a negative already farther than m costs nothing
    pos, neg = dchmt.dchmt_pair_loss(torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]]), torch.zeros(1, 1), 1.0)
    assert float(neg) == 0


def brute_force_dchmt(p_image, p_text, labels, vartheta, weight):
    n, k, _ = p_image.shape
    margin = math.sqrt(2 * k * vartheta)
    total = p_image.new_zeros(())
    for a, b in ((p_image, p_text), (p_image, p_image), (p_text, p_text)):
        for i in range(n):
            for j in range(n):
                d2 = (a[i] - b[j]).pow(2).sum()
                if float(labels[i] @ labels[j]) > 0:
                    total = total + d2 / n ** 2
                elif float(d2.detach()) < margin ** 2:
                    total = total + (margin - d2.sqrt()) ** 2 / n ** 2
    quant = sum(1 - ((2 * p - 1) ** 2).mean() for p in (p_image, p_text)) / 2
    return total + weight * quant


def test_dchmt_loss_matches_brute_force_value_and_gradient():
    g = torch.Generator().manual_seed(0)
    logits_i = torch.randn(5, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    logits_t = torch.randn(5, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)
    p_i, p_t = logits_i.softmax(-1), logits_t.softmax(-1)
    out = {"p_image": p_i, "p_text": p_t, "h_image": dchmt.select_to_code(p_i), "h_text": dchmt.select_to_code(p_t)}
    terms = dchmt.dchmt_loss(out, labels, vartheta=0.5, quantization_weight=0.1)
    slow = brute_force_dchmt(p_i, p_t, labels, 0.5, 0.1)
    torch.testing.assert_close(terms["total"], slow)
    torch.testing.assert_close(terms["total"], terms["positive"] + terms["negative"] + 0.1 * terms["quantization"])
    assert_grad_close(terms["total"], slow, (logits_i, logits_t))


# --------------------------------------------------------------------------- DSPH

@pytest.mark.parametrize("bits, n_labels, zeta", [
    (16, 24, 0.0),  # k = 5 <= log2(16) + 1: d = K / 2 (MIRFlickr)
    (32, 21, 0.0),  # NUS-WIDE
    (64, 80, 0.0),  # COCO at 64 bits: k = 7
    (16, 80, 0.25),  # [16, 7, 6]: 1 - 12 / 16
    (32, 80, 0.125),  # [32, 7, 14]: the Griesmer bound (15) is not attained
    (8, 4, -0.25),  # [8, 2, 5]: 1 - 10 / 8
])
def test_proxy_threshold(bits, n_labels, zeta):
    assert dsph.proxy_threshold(bits, n_labels) == pytest.approx(zeta)


def test_dsph_proxy_loss_by_hand():
    # h = (3, 4) -> unit (0.6, 0.8); proxies e1, e2; label 1 only; zeta = 0.5
    # positive: 1 - 0.6 = 0.4 (|P| = 1); negative: max(0, 0.8 - 0.5) = 0.3 (|N| = 1); both modalities
    h = torch.tensor([[3.0, 4.0]])
    out = {"h_image": h, "h_text": h, "proxies": torch.eye(2)}
    terms = dsph.dsph_loss(out, torch.tensor([[1.0, 0.0]]), threshold=0.5)
    assert float(terms["proxy"]) == pytest.approx(1.4)
    assert float(terms["pair"]) == 0  # a single-label sample has no pair term


def test_dsph_pair_term_by_hand():
    # two samples with two labels each, none shared: the irrelevant pairs are (0, 1) and (1, 0).
    # image codes (1, 0) and (0.6, 0.8): cos = 0.6; text codes (1, 0) and (-1, 0): cos = -1;
    # image-text: cos(i0, t1) = -1, cos(i1, t0) = 0.6.  zeta = 0.5, alpha = 0.8:
    # II: 0.8 * 2 * 0.1 / 2 = 0.08; TT: 0; IT: 0.8 * 0.1 / 2 = 0.04
    labels = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    out = {"h_image": torch.tensor([[1.0, 0.0], [0.6, 0.8]]), "h_text": torch.tensor([[1.0, 0.0], [-1.0, 0.0]]),
           "proxies": torch.randn(4, 2)}
    terms = dsph.dsph_loss(out, labels, threshold=0.5, alpha=0.8)
    assert float(terms["pair"]) == pytest.approx(0.12)


def brute_force_dsph(h_i, h_t, proxies, labels, zeta, alpha):
    def cos(a, b):
        return (a * b).sum() / (a.norm() * b.norm())

    n, c = labels.shape
    n_pos = float(labels.sum())
    n_neg = n * c - n_pos
    total = h_i.new_zeros(())
    for h in (h_i, h_t):
        for i in range(n):
            for j in range(c):
                if labels[i, j] == 1:
                    total = total + (1 - cos(h[i], proxies[j])) / n_pos
                else:
                    total = total + torch.relu(cos(h[i], proxies[j]) - zeta) / n_neg
    multi = [i for i in range(n) if labels[i].sum() > 1]
    pairs = [(i, j) for i in multi for j in multi if float(labels[i] @ labels[j]) == 0]
    for a, b in ((h_i, h_i), (h_t, h_t), (h_i, h_t)):
        for i, j in pairs:
            total = total + alpha * torch.relu(cos(a[i], b[j]) - zeta) / len(pairs)
    return total


def test_dsph_loss_matches_brute_force_value_and_gradient():
    g = torch.Generator().manual_seed(1)
    h_i = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    h_t = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    proxies = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [1, 0, 0, 0, 0],
                           [0, 0, 0, 1, 1], [1, 0, 1, 0, 0], [0, 1, 0, 0, 0]], dtype=torch.float64)
    terms = dsph.dsph_loss({"h_image": h_i, "h_text": h_t, "proxies": proxies}, labels, threshold=-0.2, alpha=0.8)
    slow = brute_force_dsph(h_i, h_t, proxies, labels, -0.2, 0.8)
    assert float(terms["pair"].detach()) > 0
    torch.testing.assert_close(terms["total"], slow)
    assert_grad_close(terms["total"], slow, (h_i, h_t, proxies))


# --------------------------------------------------------------------------- ITQ

def test_itq_rotation_is_orthogonal_and_error_never_increases():
    v = torch.randn(200, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v = v - v.mean(0)
    rotation, errors = itq.itq_rotation(v, 50, torch.Generator().manual_seed(3))
    torch.testing.assert_close(rotation.T @ rotation, torch.eye(6, dtype=torch.float64))
    assert len(errors) == 50
    assert all(b <= a + 1e-9 for a, b in zip(errors, errors[1:]))
    assert errors[-1] < errors[0]
    again, errors_again = itq.itq_rotation(v, 50, torch.Generator().manual_seed(3))
    assert torch.equal(rotation, again) and errors == errors_again


def test_itq_fit_codes_and_determinism():
    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(40, 10, generator=g), torch.randn(40, 10, generator=g)
    models = []
    for _ in range(2):
        model = itq.ITQ(itq.ItqConfig(image_dim=10, text_dim=10, bits=4))
        model.fit(image, text, seed=5)
        models.append(model)
    assert not any(p.requires_grad for p in models[0].parameters())
    torch.testing.assert_close(models[0].projection.T @ models[0].projection, torch.eye(4))
    for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values()):
        assert torch.equal(a, b)
    h = models[0].encode_image(image)
    assert h.abs().max() < 1
    assert set(binarize(h).unique().tolist()) <= {-1.0, 1.0}


def test_itq_needs_clip_text():
    with pytest.raises(ValueError, match="'itq' needs text: clip"):
        MethodSpec(model="itq", text="bow").method()
    with pytest.raises(ValueError, match="itq needs image and text features of one space"):
        itq.ITQ(itq.ItqConfig(image_dim=8, text_dim=10, bits=4))


# --------------------------------------------------------------------------- end to end

PARAMS = dict(epochs=15, batch_size=32, feature_dim=32, lr=1e-2, lr_min=1e-3, dropout=0.0, seed=0)


@pytest.mark.parametrize("model, text", [("dchmt", "clip"), ("dsph", "clip"), ("dsph", "bow"), ("itq", "clip")])
def test_baseline_trains_saves_and_encodes(separable_files, tmp_path, model, text):
    # DCHMT's pairwise loss on 2-way softmaxes learns more slowly than DSPH's proxies
    params = {**PARAMS, "epochs": 30} if model == "dchmt" else PARAMS
    closed_form = model == "itq"
    result, score = train_rebuild_encode(separable_files, tmp_path, model, text, params,
                                         loss_falls_from=None if closed_form else 1)
    if closed_form:
        assert result["epoch_selection"] == "closed form (no training epochs)"
    else:
        # supervised baselines separate a separable problem clearly better than random codes:
        # measured 0.96 (dchmt), 0.95 (dsph, clip), 0.78 (dsph, bow) vs 0.41
        assert score > random_codes_map(separable_files) + 0.25


def test_itq_with_bow_fails_before_training(separable_files, tmp_path):
    files = separable_files
    with pytest.raises(ValueError, match="'itq' needs text: clip"):
        training.train(files["pairs"], files["features"], files["graph"], tmp_path / "model.pt", "itq", BITS,
                       dict(PARAMS), dataset="separable")
    assert not (tmp_path / "model.pt").exists()


def test_itq_ignores_validation_selection(separable_files, tmp_path):
    files = separable_files
    params = {**PARAMS, "selection": "validation", "n_validation": 8}
    result = training.train(files["pairs"], files["features"], files["graph"], tmp_path / "model.pt", "itq",
                            BITS, params, dataset="separable", spec={"model": "itq", "text": "clip"})
    assert result["epoch_selection"] == "closed form (no training epochs)"
    assert (tmp_path / "model.pt").exists()


def test_a_spec_without_model_takes_the_method_name():
    assert MethodSpec.parse("itq", {"text": "clip"}) == MethodSpec(model="itq", text="clip")
    assert MethodSpec.parse("egath-cliptext", {"model": "egath", "text": "clip"}).model == "egath"
    with pytest.raises(ValueError, match="unknown method model 'mine'"):
        MethodSpec.parse("mine", {"text": "clip"})


# --------------------------------------------------------------------------- the authors' optimisers

def _head_model(model_name, bits=64):
    from egath.methods import load_method
    from egath.methods.base import HeadConfig
    method = load_method(model_name)
    cls = dchmt.DCHMT if model_name == "dchmt" else dsph.DSPH
    return method, cls(HeadConfig(image_dim=32, text_dim=20, n_labels=5, bits=bits, hidden_dim=16))


def test_dchmt_trains_with_its_authors_optimiser_and_init():
    method, model = _head_model("dchmt")
    cfg = training.TrainConfig.from_dict(dict(method.training_defaults, epochs=10))
    assert (cfg.lr, cfg.weight_decay, cfg.batch_size) == (1e-3, 0.2, 64)  # utils/get_args.py
    (opt,) = method.optimizers(model, cfg, method.make_params(None))
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-6
    assert [len(g["params"]) for g in opt.param_groups] == [4, 4]  # image net, text net
    assert {g["lr"] for g in opt.param_groups} == {1e-3}
    # each per-bit 2-way layer gets kaiming_uniform(fan_out=2): bound sqrt(3), not sqrt(3 / 64)
    weight = model.image_net[1].fc.weight
    assert weight.abs().max() <= math.sqrt(3) and weight.abs().max() > 0.9 * math.sqrt(3)
    # warm-up over the first 10% of all steps, then cosine
    params = method.make_params(None)
    assert method.lr_scale(cfg, params, 0.5) == pytest.approx(0.5)  # half of the 1-epoch warm-up
    assert method.lr_scale(cfg, params, 1.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.1)))
    assert method.lr_scale(cfg, params, 9.999) == pytest.approx(0.0, abs=1e-6)


def test_dsph_trains_hash_layers_with_bert_adam_and_proxies_with_sgd():
    method, model = _head_model("dsph")
    cfg = training.TrainConfig.from_dict(dict(method.training_defaults, epochs=10))
    heads, proxies = method.optimizers(model, cfg, method.make_params(None))
    assert isinstance(heads, torch.optim.AdamW) and heads.defaults["weight_decay"] == 0.2
    assert not any(p is model.proxies for g in heads.param_groups for p in g["params"])
    assert isinstance(proxies, torch.optim.SGD)
    (group,) = proxies.param_groups
    assert group["params"] == [model.proxies]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.02, 0.9, 5e-4)
    assert group["scheduled"] is False  # the proxies keep their rate while the heads warm up and decay
    with pytest.raises(ValueError, match="unknown parameters of method model 'dsph' \\['beta'\\]"):
        method.make_params({"beta": 1})


def test_dsph_proxies_keep_a_constant_rate_in_training(separable_files, tmp_path, monkeypatch):
    files = separable_files
    seen = []
    real_step = torch.optim.SGD.step

    def record(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", record)
    training.train(files["pairs"], files["features"], files["graph"], tmp_path / "m.pt", "dsph", BITS,
                   {"epochs": 3, "batch_size": 32, "feature_dim": 16}, dataset="separable")
    assert len(seen) == 3 * 2 and set(seen) == {0.02}  # 64 training pairs: two batches an epoch


@pytest.mark.parametrize("bits, n_labels, zeta", [
    # cells of DSPH's utils/codetable.xlsx (row = bits, column = ceil(log2 C))
    (16, 4, -0.25), (16, 64, 0.25), (32, 4, -0.3125), (32, 8, -0.125), (32, 128, 0.125),
    (64, 16, -0.03125), (64, 80, 0.0), (128, 4, -0.328125), (128, 16, -0.0625)])
def test_proxy_threshold_matches_dsph_code_table(bits, n_labels, zeta):
    assert dsph.proxy_threshold(bits, n_labels) == pytest.approx(zeta)


# --------------------------------------------------------------------------- ITQ against PCA and chance


def test_itq_projects_on_the_largest_variance_directions():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 10, generator=g, dtype=torch.float64) * torch.tensor([9.0, 7, 5, 4] + [0.3] * 6)
    model = itq.ITQ(itq.ItqConfig(image_dim=10, text_dim=10, bits=4))
    model.fit(x[:200].float(), x[200:].float(), seed=0)
    z = torch.nn.functional.normalize(x.float().double(), dim=1)
    z = z - z.mean(0)
    top = torch.linalg.eigh(z.T @ z)[1][:, -4:]  # the four largest of ten
    projection = model.projection.double()
    torch.testing.assert_close(projection @ projection.T, top @ top.T, rtol=0, atol=1e-5)


def test_itq_beats_chance_when_images_and_texts_share_a_space(tmp_path):
    """PCA-ITQ is unsupervised: it needs both modalities in one space, as CLIP's are."""
    from egath.graph import build_graph, clip_label_embeddings
    from h5files import write_features, write_pairs
    from separable import C, D, N, N_QUERY, N_TRAIN

    rng = np.random.default_rng(1)
    labels = np.zeros((N, C), np.uint8)
    labels[np.arange(N), rng.integers(C, size=N)] = 1
    centres = rng.standard_normal((C, D))  # one space: each label has one centre for both modalities
    image = labels @ centres + 0.3 * rng.standard_normal((N, D))
    text = labels @ centres + 0.3 * rng.standard_normal((N, D))
    order = rng.permutation(N)
    files = {"pairs": tmp_path / "pairs.h5", "features": tmp_path / "features.h5", "graph": tmp_path / "graph.h5"}
    write_pairs(files["pairs"], labels, order[:N_QUERY], order[N_QUERY:N_QUERY + N_TRAIN], dataset="shared")
    write_features(files["features"], image, text, rng.standard_normal((C, D)))
    build_graph(files["pairs"], files["graph"], 0.3, *clip_label_embeddings(files["features"]))
    training.train(files["pairs"], files["features"], files["graph"], tmp_path / "model.pt", "itq", BITS,
                   dict(PARAMS), dataset="shared", spec={"model": "itq", "text": "clip"})
    codes = encode_dataset(tmp_path / "model.pt", files["pairs"], files["features"], tmp_path / "codes.h5")
    assert retrieval_map(codes) > random_codes_map(files) + 0.3
