"""Tests for MITH (egath.methods.mith): its loss terms and localized token aggregation by hand and
against brute-force loops (value and gradient), the stored codes, the model's parts as the
authors' code has them, its optimiser and schedule, training end to end on the separable problem,
and resume."""

import math

import pytest
import torch

from egath import training
from egath.methods import mith
from egath.methods.base import label_similarity
from separable import (assert_grad_close, assert_resumes_like_an_uninterrupted_run, random_codes_map,
                       train_rebuild_encode, train_separable)

E = math.e


# --------------------------------------------------------------------------- the terms by hand

def test_likelihood_by_hand():
    # stored rows (2, 0), (0, 2), batch code (1, 0): A h^T = (2, 0), theta = (1, 0); S = (1, 0):
    # [log(1 + e) - 1 + log 2] / 2 = (0.313262 + 0.693147) / 2 = 0.503204
    value = mith.likelihood(torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([[1.0, 0.0]]),
                            torch.tensor([[1.0], [0.0]]))
    assert float(value) == pytest.approx((math.log(1 + E) - 1 + math.log(2)) / 2)
    # A h^T = 200 is clamped to 64 before the 1/2: theta = 32; S = 0 costs log(1 + e^32) = 32.0,
    # S = 1 costs log(1 + e^-32) = 1.3e-14; beyond the clamp no gradient reaches h
    h = torch.tensor([[1.0, 1.0]], requires_grad=True)
    stored = torch.tensor([[100.0, 100.0]])
    assert float(mith.likelihood(stored, h.detach(), torch.zeros(1, 1))) == pytest.approx(32.0)
    value = mith.likelihood(stored, h, torch.ones(1, 1))
    assert float(value.detach()) == pytest.approx(0.0, abs=1e-12)
    value.backward()
    assert torch.equal(h.grad, torch.zeros(1, 2))


def test_info_nce_by_hand():
    # a = b = I, temperature 1: each row's cross-entropy is -log(e / (e + 1)) = log(1 + 1/e) = 0.313262
    eye = torch.eye(2)
    assert float(mith.info_nce(eye, eye, 1.0)) == pytest.approx(math.log(1 + 1 / E))
    # concepts: sample 0 matched (0.313262 per row); sample 1 with its text concepts swapped, so each
    # of its rows puts 0 on the target and 1 on the other: log(1 + e) = 1.313262; mean of the 4 rows
    a = torch.stack([eye, eye])
    b = torch.stack([eye, eye.flip(0)])
    want = (math.log(1 + 1 / E) + math.log(1 + E)) / 2
    assert float(mith.concept_info_nce(a, b, 1.0)) == pytest.approx(want)
    # temperature 0.5 doubles the logits: log(1 + e^-2) = 0.126928 for matched rows
    assert float(mith.concept_info_nce(eye[None], eye[None], 0.5)) == pytest.approx(math.log(1 + E ** -2))


def test_distillation_value_and_its_two_gradients_by_hand():
    # c = (0.5, -0.5), t = (0.1, 0.1): differences (0.4, -0.6), squared sum 0.52; value 1.1 * 0.52
    cls = torch.tensor([[0.5, -0.5]], requires_grad=True)
    tokens = torch.tensor([[0.1, 0.1]], requires_grad=True)
    value = mith.distillation(cls, tokens)
    assert float(value.detach()) == pytest.approx(0.572)
    value.backward()
    # the local code learns the whole pull 2 (t - c); the global one a tenth of 2 (c - t)
    torch.testing.assert_close(tokens.grad, torch.tensor([[-0.8, 1.2]]))
    torch.testing.assert_close(cls.grad, torch.tensor([[0.08, -0.12]]))


def test_quantization_target_weighs_global_and_local_codes_by_lambda():
    # one sample, 2 bits: c_I = (0.5, -0.2), c_T = (0.3, 0.1), t_I = (-0.9, 0.9), t_T = (-0.9, -0.9)
    # bit 0: 0.8 lambda - 1.8 (1 - lambda): +1 at lambda 0.99 (0.774), -1 at 0.5 (-0.5); bit 1: -1
    # h_I = (-0.2, 0.35), h_T = (-0.3, -0.4)
    # lambda 0.99, B = (1, -1): (1.44 + 1.8225 + 1.69 + 0.36) / 2 = 2.65625
    # lambda 0.5,  B = (-1, -1): (0.64 + 1.8225 + 0.49 + 0.36) / 2 = 1.65625
    cls_i, cls_t = torch.tensor([[0.5, -0.2]]), torch.tensor([[0.3, 0.1]])
    tok_i, tok_t = torch.tensor([[-0.9, 0.9]]), torch.tensor([[-0.9, -0.9]])
    out = {"cls_image": cls_i, "cls_text": cls_t, "tokens_image": tok_i, "tokens_text": tok_t,
           "h_image": 0.5 * (cls_i + tok_i), "h_text": 0.5 * (cls_t + tok_t),
           "global_image": torch.eye(2)[:1], "global_text": torch.eye(2)[:1],
           "concepts_image": torch.eye(2)[None], "concepts_text": torch.eye(2)[None]}
    stored = {name: out[name] for name in mith.STORED}
    for share, want in ((0.99, 2.65625), (0.5, 1.65625)):
        terms = mith.mith_loss(out, stored, torch.ones(1, 1), mith.MithParams(code_share=share))
        assert float(terms["quantization"]) == pytest.approx(want)


def test_token_aggregation_by_hand():
    # tokens t0 = (1, 0), t1 = (0, 1), t2 = (1, 1); scores on 4 concepts, top_k 2:
    # t0 (0.5, 0.2, 0.1, -0.1) keeps concepts 0, 1; t1 (-0.3, 0.4, 0.0, -0.2) keeps only 1 (0 is not
    # positive); t2 (0.2, 0.3, 0.6, -0.5) keeps 2, 1 (0.2 is its third). Concept 0: t0 alone;
    # concept 1: softmax(0.2, 0.4, 0.3) = (0.300610, 0.367165, 0.332225) -> (0.632835, 0.699390);
    # concept 2: t2 alone; concept 3: no token, zero
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    scores = torch.tensor([[[0.5, 0.2, 0.1, -0.1], [-0.3, 0.4, 0.0, -0.2], [0.2, 0.3, 0.6, -0.5]]])
    want = torch.tensor([[[1.0, 0.0], [0.632835, 0.699390], [1.0, 1.0], [0.0, 0.0]]])
    torch.testing.assert_close(mith.aggregate_tokens(tokens, scores, 2), want, atol=1e-6, rtol=0)
    # t1 padded: concept 1 = softmax(0.2, 0.3) over t0, t2 = (0.475021, 0.524979) -> (1, 0.524979)
    padded = mith.aggregate_tokens(tokens, scores, 2, padding=torch.tensor([[False, True, False]]))
    torch.testing.assert_close(padded[0, 1], torch.tensor([1.0, 0.524979]), atol=1e-6, rtol=0)
    # a tie at the k-th value keeps both: t0 (0.5, 0.3, 0.3, ...) joins concepts 0, 1 and 2
    tied = scores.clone()
    tied[0, 0, 1:3] = 0.3
    aggregated = mith.aggregate_tokens(tokens[:, :1], tied[:, :1], 2)
    torch.testing.assert_close(aggregated[0], torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 0.0]]))
    # top_k above the number of concepts keeps every positive one (their topk would fail)
    assert torch.equal(mith.aggregate_tokens(tokens[:, :1], scores[:, :1], 10)[0, :3],
                       torch.tensor([[1.0, 0.0]] * 3))


def test_sinusoid_positions_by_hand():
    table = mith.sinusoid_positions(3, 4)  # frequencies 1 and 1/100; divided by sqrt(4)
    want = torch.tensor([[0.0, 1.0, 0.0, 1.0],
                         [math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)],
                         [math.sin(2), math.cos(2), math.sin(0.02), math.cos(0.02)]]) / 2
    torch.testing.assert_close(table, want)


# --------------------------------------------------------------------------- brute force

def brute_force_aggregation(tokens, scores, top_k, padding):
    """LTA with loops over samples, concepts and tokens."""
    n, length, bits = scores.shape
    rows = []
    for b in range(n):
        concepts = []
        for k in range(bits):
            kept = []
            for token in range(length):
                if padding[b, token]:
                    continue
                positive = sorted((float(s) for s in scores[b, token] if s > 0), reverse=True)
                if scores[b, token, k] > 0 and float(scores[b, token, k]) >= positive[:top_k][-1]:
                    kept.append(token)
            z = sum(math.exp(float(scores[b, t, k])) for t in kept)
            concepts.append(sum((math.exp(float(scores[b, t, k])) / z * tokens[b, t] for t in kept),
                                tokens.new_zeros(tokens.shape[-1])))
        rows.append(torch.stack(concepts))
    return torch.stack(rows)


def test_token_aggregation_matches_brute_force_value_and_gradient():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(3, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    scores = torch.randn(3, 5, 6, generator=g, dtype=torch.float64).tanh()
    padding = torch.zeros(3, 5, dtype=torch.bool)
    padding[1, 3:] = True
    padding[2, 0] = True
    fast = mith.aggregate_tokens(tokens, scores, 2, padding)
    slow = brute_force_aggregation(tokens, scores, 2, padding)
    torch.testing.assert_close(fast, slow)
    weights = torch.randn(fast.shape, generator=g, dtype=torch.float64)
    assert_grad_close((fast * weights).sum(), (slow * weights).sum(), (tokens,))
    assert (fast.abs().sum(-1) == 0).any()  # some concept no token kept


def brute_force_mith(raw, stored, similarity, p):
    """The loss of train_asym.py compute_loss with loops over rows, batch samples, bits and concepts;
    raw: the codes' tanh arguments and the unnormalised features, with gradients."""
    n_batch, bits = raw["cls_image"].shape
    out = {name: torch.tanh(raw[name]) for name in mith.STORED}
    unit = {name: raw[name] / raw[name].norm(dim=-1, keepdim=True)
            for name in ("global_image", "global_text", "concepts_image", "concepts_text")}

    def likelihood(a, b):
        total = b.new_zeros(())
        for i in range(len(a)):
            for j in range(n_batch):
                dot = sum(a[i][k] * b[j][k] for k in range(bits))
                if abs(float(dot.detach())) > 64:  # clamped: a constant, no gradient
                    dot = dot.new_tensor(math.copysign(64.0, float(dot.detach())))
                theta = 0.5 * dot
                total = total + torch.log(1 + torch.exp(theta)) - similarity[i, j] * theta
        return total / (len(a) * n_batch)

    def cross_entropy(logits, target):
        return -(logits[target] - torch.log(sum(torch.exp(x) for x in logits)))

    def nce(a, b):
        total = a.new_zeros(())
        for i in range(len(a)):
            total = total + cross_entropy([(a[i] * b[j]).sum() / p.temperature for j in range(len(b))], i)
            total = total + cross_entropy([(b[i] * a[j]).sum() / p.temperature for j in range(len(a))], i)
        return total / (2 * len(a))

    h = {m: 0.5 * (out[f"cls_{m}"] + out[f"tokens_{m}"]) for m in ("image", "text")}
    quantization = h["image"].new_zeros(())
    for b in range(n_batch):
        for k in range(bits):
            mixed = (p.code_share * (out["cls_image"][b, k] + out["cls_text"][b, k])
                     + (1 - p.code_share) * (out["tokens_image"][b, k] + out["tokens_text"][b, k]))
            code = 1.0 if float(mixed.detach()) > 0 else -1.0
            quantization = quantization + (h["image"][b, k] - code) ** 2 + (h["text"][b, k] - code) ** 2
    distill = h["image"].new_zeros(())
    for m in ("image", "text"):
        c, t = out[f"cls_{m}"], out[f"tokens_{m}"]
        for b in range(n_batch):
            for k in range(bits):
                distill = distill + (c[b, k].detach() - t[b, k]) ** 2 + 0.1 * (c[b, k] - t[b, k].detach()) ** 2
    concepts = sum(nce(unit["concepts_image"][b], unit["concepts_text"][b]) for b in range(n_batch)) / n_batch
    return (p.intra_weight * (likelihood(stored["tokens_image"], out["tokens_image"])
                              + likelihood(stored["tokens_text"], out["tokens_text"]))
            + p.inter_weight * (likelihood(stored["cls_image"], out["cls_text"])
                                + likelihood(stored["cls_text"], out["cls_image"]))
            + p.quantization_weight * quantization / (n_batch * bits)
            + p.contrastive_weight * (nce(unit["global_image"], unit["global_text"])
                                      + p.concept_contrastive_share * concepts)
            + p.distillation_weight * distill / n_batch)


def test_objective_matches_brute_force_value_and_gradient():
    g = torch.Generator().manual_seed(1)
    n, n_batch, bits, width = 7, 4, 3, 5
    labels = (torch.rand(n, 3, generator=g) > 0.5).double()
    index = torch.tensor([5, 0, 3, 6])
    params = mith.MithParams(intra_weight=0.7, inter_weight=2.0, quantization_weight=3.0, contrastive_weight=1.5,
                             concept_contrastive_share=0.3, distillation_weight=0.9, code_share=0.6,
                             temperature=0.5)
    objective = mith.MithObjective(labels, bits, params, seed=3)
    objective.stored = {name: value.double() for name, value in objective.stored.items()}
    raw = {name: torch.randn(n_batch, bits, generator=g, dtype=torch.float64, requires_grad=True)
           for name in mith.STORED}
    raw |= {f"global_{m}": torch.randn(n_batch, width, generator=g, dtype=torch.float64, requires_grad=True)
            for m in ("image", "text")}
    raw |= {f"concepts_{m}": torch.randn(n_batch, bits, width, generator=g, dtype=torch.float64, requires_grad=True)
            for m in ("image", "text")}
    out = {name: torch.tanh(raw[name]) for name in mith.STORED}
    out |= {name: torch.nn.functional.normalize(raw[name], dim=-1) for name in raw if name not in mith.STORED}
    out |= {f"h_{m}": 0.5 * (out[f"cls_{m}"] + out[f"tokens_{m}"]) for m in ("image", "text")}
    # row 1 of each store (not in the batch) meets the batch's first output at 100: beyond the clamp
    partner = {"tokens_image": "tokens_image", "tokens_text": "tokens_text", "cls_image": "cls_text",
               "cls_text": "cls_image"}
    for name, other in partner.items():
        first = out[other][0].detach()
        objective.stored[name][1] = 100 * first / first.pow(2).sum()
    before = {name: value.clone() for name, value in objective.stored.items()}

    terms = objective.loss(out, labels[index], index)
    # the batch's rows of every store now hold its outputs; the others are as they were
    for name in mith.STORED:
        torch.testing.assert_close(objective.stored[name][index], out[name].detach())
        rest = torch.ones(n, dtype=torch.bool)
        rest[index] = False
        assert torch.equal(objective.stored[name][rest], before[name][rest])
    products = (objective.stored["cls_image"] @ out["cls_text"].detach().T).abs()
    assert (products > 64).any() and (products < 64).sum() > n_batch  # both sides of the clamp
    slow = brute_force_mith(raw, objective.stored, label_similarity(labels, labels[index]), params)
    torch.testing.assert_close(terms["total"], slow)
    assert_grad_close(terms["total"], slow, tuple(raw.values()))


def test_stores_start_as_seeded_normal_draws_on_the_cpu():
    labels = torch.zeros(4000, 2)
    stores = mith.MithObjective(labels, 16, mith.MithParams(), seed=5).stored
    assert list(stores) == list(mith.STORED)
    for value in stores.values():
        assert value.shape == (4000, 16)
        assert abs(float(value.mean())) < 0.02 and float(value.std()) == pytest.approx(1.0, abs=0.02)
    again = mith.MithObjective(labels, 16, mith.MithParams(), seed=5).stored
    assert all(torch.equal(stores[k], again[k]) for k in stores)
    assert not torch.equal(stores["cls_image"], stores["cls_text"])


# --------------------------------------------------------------------------- model, optimiser, schedule

def model_for(bits=8, width=16, image_dim=10, text_dim=7, **params):
    cfg = training.TrainConfig.from_dict({**mith.METHOD.training_defaults, "feature_dim": width, "epochs": 10})
    data = training.TrainingData(torch.zeros(3, image_dim), torch.zeros(3, text_dim), torch.zeros(3, 2))
    params = mith.METHOD.make_params(params)
    model, objective = mith.METHOD.build(bits, cfg, params, data, None)
    return cfg, params, model, objective


def test_layers_follow_the_authors_model():
    _, _, model, _ = model_for(bits=8, width=128)
    head = model.hashing
    # one GCL for both modalities: 2 residual MLPs 128 -> 512 -> 128, then 8 concepts without bias
    shapes = [(tuple(b[1].weight.shape), tuple(b[4].weight.shape)) for b in head.gcl.mlp.blocks]
    assert shapes == [((512, 128), (128, 512))] * 2
    assert head.gcl.concepts.bias is None and head.gcl.concepts.weight.shape == (8, 128)
    # an LCT per modality: 2 pre-norm blocks of CLIP's shape (128 // 64 = 2 heads, 4x MLP), a
    # Linear(128, 1) per bit, and a concept projection
    for modality in ("image", "text"):
        lct = head.lct[modality]
        assert len(lct.blocks) == 2
        block = lct.blocks[0]
        assert block.norm_first and block.self_attn.num_heads == 2 and block.linear1.out_features == 512
        assert lct.bit_weight.shape == (8, 128) and lct.bit_weight.abs().max() <= 1 / math.sqrt(128)
        assert head.concept_proj[modality].weight.shape == (128, 128)
    assert head.lct["image"] is not head.lct["text"]
    assert mith.attention_heads(512) == 8 and mith.attention_heads(32) == 1 and mith.attention_heads(320) == 5
    assert mith.attention_heads(200) == 2  # 200 // 64 = 3 does not divide 200
    x = torch.linspace(-3, 3, 7)
    torch.testing.assert_close(mith.quick_gelu(x), x * torch.sigmoid(1.702 * x))


def test_outputs_and_codes():
    _, _, model, _ = model_for(bits=8, width=16)
    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(5, 10, generator=g), torch.randn(5, 7, generator=g)
    out = model(image, text)
    for m in ("image", "text"):
        torch.testing.assert_close(out[f"h_{m}"], 0.5 * (out[f"cls_{m}"] + out[f"tokens_{m}"]))
        assert out[f"h_{m}"].abs().max() < 1
        torch.testing.assert_close(out[f"global_{m}"].norm(dim=-1), torch.ones(5))
        assert out[f"concepts_{m}"].shape == (5, 8, 16)
    torch.testing.assert_close(model.encode_image(image), out["h_image"])
    torch.testing.assert_close(model.encode_text(text), out["h_text"])
    # the pooled run is the token path with the pooled feature as its only token
    with_token = model.branch("image", image, tokens=image.unsqueeze(1))
    for key, value in model.branch("image", image).items():
        torch.testing.assert_close(with_token[key], value)


def test_optimiser_schedule_and_defaults_are_the_authors():
    cfg, params, model, _ = model_for()
    assert (cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.dropout) == (1e-3, 0.01, 128, 0.0)
    assert mith.METHOD.training_defaults["feature_dim"] == 512 and "epochs" not in mith.METHOD.training_defaults
    assert (params.top_k, params.transformer_layers, params.res_mlp_layers) == (8, 2, 2)
    assert (params.intra_weight, params.inter_weight, params.quantization_weight, params.contrastive_weight,
            params.concept_contrastive_share, params.distillation_weight, params.code_share,
            params.temperature) == (1, 10, 8, 50, 0.01, 1, 0.99, 0.07)
    (opt,) = mith.METHOD.optimizers(model, cfg, params)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-6
    trunks, head = opt.param_groups  # theirs: CLIP, then the hashing model
    assert {id(p) for p in trunks["params"]} == {id(p) for p in model.trunks.parameters()}
    assert {id(p) for p in head["params"]} == {id(p) for p in model.hashing.parameters()}
    assert len(trunks["params"]) + len(head["params"]) == len(list(model.parameters()))
    assert {g["lr"] for g in opt.param_groups} == {1e-3} and {g["weight_decay"] for g in opt.param_groups} == {0.01}
    # warm-up over the first 5% of all steps (half an epoch of 10), then cosine
    assert mith.METHOD.lr_scale(cfg, params, 0.25) == pytest.approx(0.5)
    assert mith.METHOD.lr_scale(cfg, params, 5.0) == pytest.approx(0.5)
    assert mith.METHOD.lr_scale(cfg, params, 9.999) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="top_k"):
        mith.METHOD.make_params({"top_k": 0})
    with pytest.raises(ValueError, match="code_share"):
        mith.METHOD.make_params({"code_share": 1.5})


# --------------------------------------------------------------------------- end to end

PARAMS = dict(epochs=15, batch_size=16, feature_dim=32, lr=1e-2, seed=0)


@pytest.mark.parametrize("text", ["bow", "clip"])
def test_mith_trains_saves_and_encodes(separable_files, tmp_path, text):
    _, score = train_rebuild_encode(separable_files, tmp_path, "mith", text, PARAMS)
    # measured 0.97 (bow), 0.99 (clip) against 0.41 for random codes
    assert score > random_codes_map(separable_files) + 0.25


def test_interrupted_run_resumes_to_the_same_weights(separable_files, tmp_path, monkeypatch):
    # killed in epoch 3 of 4, when the stores hold outputs of two epochs: the resumed run must take
    # them from the checkpoint (the global RNG is scrambled before it)
    params = {**PARAMS, "epochs": 4}
    ckpt = assert_resumes_like_an_uninterrupted_run(
        lambda out: train_separable(separable_files, out, "mith", "clip", params), tmp_path, monkeypatch,
        mith.MithObjective, epoch=3)
    stores = ckpt["objective"]
    assert set(stores) == set(mith.STORED)
    assert all(value.abs().max() < 1 for value in stores.values())  # every row overwritten by a tanh output
