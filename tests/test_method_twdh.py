"""Tests for TwDH (egath.methods.twdh): both steps' losses, the centre targets and the hash centres
on hand-computed cases and against brute-force loops (value and gradient), its layers, optimisers,
parameter groups and schedules as the authors' code has them, and a run of both steps trained end
to end, rebuilt from model.pt, encoded, and resumed after an interruption."""

import math

import pytest
import torch
import torch.nn.functional as F

from egath import training
from egath.first_stage import run_first_stage
from egath.methods import twdh
from egath.methods.base import StatelessObjective
from separable import (BITS, assert_grad_close, assert_resumes_like_an_uninterrupted_run, random_codes_map,
                       train_rebuild_encode, train_separable)


# --------------------------------------------------------------------------- hand-computed cases

def test_codes_are_pairs_of_entries():
    # scores (0, ln 3 | 2, 2): softmax per pair (0.25, 0.75 | 0.5, 0.5); the bits p+ - p-: 0.5 and 0
    p = twdh.pair_softmax(torch.tensor([[0.0, math.log(3), 2.0, 2.0]]))
    torch.testing.assert_close(p, torch.tensor([[0.25, 0.75, 0.5, 0.5]]))
    torch.testing.assert_close(twdh.pair_code(p), torch.tensor([[0.5, 0.0]]))
    # -1 -> (1, 0), +1 -> (0, 1), in order
    torch.testing.assert_close(twdh.pair_onehot(torch.tensor([[1.0, -1.0, 1.0]])),
                               torch.tensor([[0.0, 1.0, 1.0, 0.0, 0.0, 1.0]]))
    # 1 - mean((2p - 1)^2): (0.25, 0.75, 0.5, 0.5) -> 1 - (0.25 + 0.25 + 0 + 0) / 4 = 0.875
    assert float(twdh.quantization_term(p)) == pytest.approx(0.875)


def test_pair_softmax_is_a_softmax_over_pairs_even_where_it_saturates():
    # pairs 0.5, 5, 18 and 30 apart, each against its target: at 18 and 30, 1 - p_+ in float32 would
    # be 6e-8 or 0 where p_- is 1.5e-8 or 9e-14, and the cross entropy of a confident wrong bit wrong
    z = torch.tensor([[0.0, 0.5, 5.0, 0.0, 9.0, -9.0, -15.0, 15.0]], requires_grad=True)
    reference = z.detach().clone().requires_grad_()
    y = torch.tensor([[1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0]])
    fast = F.binary_cross_entropy(twdh.pair_softmax(z), y, reduction="none")
    slow = F.binary_cross_entropy(reference.unflatten(-1, (-1, 2)).softmax(-1).flatten(-2), y, reduction="none")
    torch.testing.assert_close(fast, slow)
    fast.sum().backward()
    slow.sum().backward()
    # the gradients where nothing saturates (where it does, BCE's own 1e-12 floor decides them)
    torch.testing.assert_close(z.grad[:, :4], reference.grad[:, :4])


def test_centre_targets_take_the_majority_and_break_ties_with_the_batch_draw():
    centers = torch.tensor([[1.0, 1.0, -1.0, -1.0],
                            [1.0, -1.0, 1.0, -1.0],
                            [1.0, 1.0, 1.0, 1.0]])
    tie = torch.tensor([-1.0, -1.0, 1.0, 1.0])
    labels = torch.tensor([[1.0, 0.0, 0.0],   # one label: its centre
                           [1.0, 1.0, 0.0],   # sums (2, 0, 0, -2): bits 2 and 3 tie
                           [1.0, 1.0, 1.0],   # sums (3, 1, 1, -1): no tie
                           [0.0, 0.0, 0.0]])  # no label: the draw itself
    torch.testing.assert_close(twdh.center_targets(labels, centers, tie), torch.tensor([
        [1.0, 1.0, -1.0, -1.0], [1.0, -1.0, 1.0, -1.0], [1.0, 1.0, 1.0, -1.0], [-1.0, -1.0, 1.0, 1.0]]))


def test_transform_loss_by_hand():
    # L = K = 1. T = [[0.5, -0.5], [0, ln 3]]; a long target +1 reads T's second row: q = (0.25, 0.75).
    # short target +1, y = (0, 1): BCE = (-ln 0.75 - ln 0.75) / 2 = 0.287682; quantisation 1 - 0.25;
    # L1 = 0.5 + 0.5 + 0 + ln 3 = 2.098612; total with weight 0.1: 0.287682 + 0.75 + 0.209861 = 1.247543
    transform = torch.tensor([[0.5, -0.5], [0.0, math.log(3)]])
    terms = twdh.transform_loss(transform, torch.tensor([[1.0]]), torch.tensor([[1.0]]), l1_weight=0.1)
    assert float(terms["bce"]) == pytest.approx(0.287682, abs=1e-6)
    assert float(terms["quantization"]) == pytest.approx(0.75)
    assert float(terms["l1"]) == pytest.approx(2.098612, abs=1e-6)
    assert float(terms["total"]) == pytest.approx(1.247543, abs=1e-6)
    # a long target -1 reads the first row: q = softmax(0.5, -0.5) = (0.731059, 0.268941); short target -1:
    # BCE = -ln 0.731059 = 0.313262
    terms = twdh.transform_loss(transform, torch.tensor([[-1.0]]), torch.tensor([[-1.0]]), l1_weight=0.0)
    assert float(terms["bce"]) == pytest.approx(0.313262, abs=1e-6)


def test_twdh_loss_by_hand():
    # L = K = 1, one sample whose label's long centre is +1 and short centre -1.
    # long: P_I = (0.25, 0.75), P_T = (0.5, 0.5), Y = (0, 1): BCE_I = -ln 0.75 = 0.287682, BCE_T = ln 2;
    #   long_bce = 0.490415; quantisation (1 - 0.25 + 1 - 0) / 2 = 0.875
    # short: S_I = (0.9, 0.1), S_T = (0.2, 0.8), Y = (1, 0): BCE_I = -ln 0.9 = 0.105361, BCE_T = -ln 0.2
    #   = 1.609438; short_bce = 0.857399; quantisation (1 - 0.64 + 1 - 0.36) / 2 = 0.5
    # total with quan_alpha 0.5 and low_rate 0.1: 0.490415 + 0.4375 + 0.1 (0.857399 + 0.5) = 1.063655
    out = {"long_image": torch.tensor([[0.25, 0.75]]), "long_text": torch.tensor([[0.5, 0.5]]),
           "short_image": torch.tensor([[0.9, 0.1]]), "short_text": torch.tensor([[0.2, 0.8]])}
    labels = torch.tensor([[1.0]])
    terms = twdh.twdh_loss(out, labels, torch.tensor([[1.0]]), torch.tensor([[-1.0]]), torch.ones(1), torch.ones(1),
                           quan_alpha=0.5, low_rate=0.1)
    assert float(terms["long_bce"]) == pytest.approx(0.490415, abs=1e-6)
    assert float(terms["long_quantization"]) == pytest.approx(0.875)
    assert float(terms["short_bce"]) == pytest.approx(0.857399, abs=1e-6)
    assert float(terms["short_quantization"]) == pytest.approx(0.5)
    assert float(terms["total"]) == pytest.approx(1.063655, abs=1e-6)
    # the authors' default low_rate 0: the short codes do not train the network
    terms = twdh.twdh_loss(out, labels, torch.tensor([[1.0]]), torch.tensor([[-1.0]]), torch.ones(1), torch.ones(1),
                           quan_alpha=0.5, low_rate=0.0)
    assert float(terms["total"]) == pytest.approx(0.490415 + 0.4375, abs=1e-6)


def test_lossless_means_every_labels_long_centre_maps_to_its_short_centre():
    # L = 2, K = 1: T reads the first long bit (rows 0 and 1: its -1 and +1 entries) and ignores the second
    transform = torch.tensor([[3.0, -3.0], [-3.0, 3.0], [0.0, 0.0], [0.0, 0.0]])
    long_centers = torch.tensor([[1.0, 1.0], [-1.0, 1.0]])
    assert twdh.maps_losslessly(transform, long_centers, torch.tensor([[1.0], [-1.0]]))
    assert not twdh.maps_losslessly(transform, long_centers, torch.tensor([[1.0], [1.0]]))


def test_hash_centres_are_hadamard_rows_or_balanced_random_rows():
    torch.testing.assert_close(twdh.sylvester_hadamard(4), torch.tensor([
        [1.0, 1.0, 1.0, 1.0], [1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0], [1.0, -1.0, -1.0, 1.0]]))
    h = twdh.sylvester_hadamard(16)
    torch.testing.assert_close(h @ h.T, 16 * torch.eye(16))
    with pytest.raises(ValueError, match="power of two, got 24"):
        twdh.sylvester_hadamard(24)
    # 24 labels at 16 bits (MIRFlickr's, as TwDH's shipped centres): distinct rows of [H; -H], so
    # any two differ in 8 or 16 bits
    centers = twdh.hash_centers(24, 16, torch.Generator().manual_seed(0))
    rows = torch.cat((h, -h))
    assert all(any(torch.equal(c, r) for r in rows) for c in centers)
    distances = (16 - centers @ centers.T) / 2
    off_diagonal = distances[~torch.eye(24, dtype=torch.bool)]
    assert set(off_diagonal.unique().tolist()) <= {8.0, 16.0}
    assert torch.equal(centers, twdh.hash_centers(24, 16, torch.Generator().manual_seed(0)))  # seeded
    # 80 labels at 16 bits (more than 2K), or 24 bits (no Hadamard matrix): half the bits -1 in each row
    for n_labels, bits in ((80, 16), (5, 24)):
        centers = twdh.hash_centers(n_labels, bits, torch.Generator().manual_seed(0))
        assert centers.shape == (n_labels, bits) and set(centers.unique().tolist()) == {-1.0, 1.0}
        assert torch.equal(centers.sum(1), torch.zeros(n_labels))
    assert len({tuple(r.tolist()) for r in twdh.hash_centers(80, 16, torch.Generator().manual_seed(0))}) > 70


# --------------------------------------------------------------------------- brute force

def brute_bce(p, y):
    """mean over entries of -(y ln p + (1 - y) ln (1 - p)), with loops."""
    total, count = 0.0, 0
    for i in range(p.shape[0]):
        for j in range(p.shape[1]):
            total = total - (y[i][j] * torch.log(p[i, j]) + (1 - y[i][j]) * torch.log(1 - p[i, j]))
            count += 1
    return total / count


def brute_quantization(p):
    return 1 - sum((2 * p[i, j] - 1) ** 2 for i in range(p.shape[0]) for j in range(p.shape[1])) / p.numel()


def brute_targets(labels, centers, tie):
    """models/TwDH/TwDH.py hash_center_multilables, with loops: the sign of the mean of the
    sample's centres, the tie draw where it is 0, as a list of (-1/+1 lists)."""
    out = []
    for row in labels.tolist():
        chosen = [c for c, on in enumerate(row) if on == 1]
        means = [sum(float(centers[c, k]) for c in chosen) / max(len(chosen), 1) for k in range(centers.shape[1])]
        out.append([float(tie[k]) if m == 0 else (1.0 if m > 0 else -1.0) for k, m in enumerate(means)])
    return out


def brute_onehot(codes):
    """(1, 0) per -1 and (0, 1) per +1, with loops (hash_convert)."""
    return [[value for bit in row for value in ((0.0, 1.0) if bit > 0 else (1.0, 0.0))] for row in codes]


def brute_pair_softmax(z):
    rows = []
    for i in range(z.shape[0]):
        row = []
        for k in range(z.shape[1] // 2):
            a, b = torch.exp(z[i, 2 * k]), torch.exp(z[i, 2 * k + 1])
            row += [a / (a + b), b / (a + b)]
        rows.append(torch.stack(row))
    return torch.stack(rows)


def test_twdh_loss_matches_brute_force_value_and_gradient():
    g = torch.Generator().manual_seed(0)
    n, long_bits, bits, n_labels = 5, 6, 4, 3
    scores = [torch.randn(n, 2 * size, generator=g, dtype=torch.float64, requires_grad=True)
              for size in (long_bits, long_bits, bits, bits)]
    labels = torch.tensor([[1, 0, 0], [0, 1, 1], [1, 1, 0], [1, 1, 1], [0, 0, 1]], dtype=torch.float64)
    long_centers = twdh.hash_centers(n_labels, long_bits, g).double()
    short_centers = twdh.hash_centers(n_labels, bits, g).double()
    long_tie, short_tie = twdh.random_signs(long_bits, g).double(), twdh.random_signs(bits, g).double()
    out = dict(zip(("long_image", "long_text", "short_image", "short_text"), map(twdh.pair_softmax, scores)))
    terms = twdh.twdh_loss(out, labels, long_centers, short_centers, long_tie, short_tie, quan_alpha=0.7, low_rate=0.3)

    probs = [brute_pair_softmax(z) for z in scores]
    y_long = brute_onehot(brute_targets(labels, long_centers, long_tie))
    y_short = brute_onehot(brute_targets(labels, short_centers, short_tie))
    slow = ((brute_bce(probs[0], y_long) + brute_bce(probs[1], y_long)) / 2
            + 0.7 * (brute_quantization(probs[0]) + brute_quantization(probs[1])) / 2
            + 0.3 * ((brute_bce(probs[2], y_short) + brute_bce(probs[3], y_short)) / 2
                     + (brute_quantization(probs[2]) + brute_quantization(probs[3])) / 2))
    torch.testing.assert_close(terms["total"], slow)
    assert_grad_close(terms["total"], slow, scores)


def test_transform_loss_matches_brute_force_value_and_gradient():
    g = torch.Generator().manual_seed(1)
    n, long_bits, bits = 6, 4, 3
    transform = torch.randn(2 * long_bits, 2 * bits, generator=g, dtype=torch.float64, requires_grad=True)
    long_targets = twdh.random_signs(n * long_bits, g).double().view(n, long_bits)
    short_targets = twdh.random_signs(n * bits, g).double().view(n, bits)
    terms = twdh.transform_loss(transform, long_targets, short_targets, l1_weight=0.05)
    x = brute_onehot(long_targets.tolist())
    z = torch.stack([torch.stack([sum(x[i][a] * transform[a, b] for a in range(2 * long_bits))
                                  for b in range(2 * bits)]) for i in range(n)])
    q = brute_pair_softmax(z)
    l1 = sum(torch.abs(transform[a, b]) for a in range(2 * long_bits) for b in range(2 * bits))
    slow = brute_bce(q, brute_onehot(short_targets.tolist())) + brute_quantization(q) + 0.05 * l1
    torch.testing.assert_close(terms["total"], slow)
    assert_grad_close(terms["total"], slow, (transform,))


# --------------------------------------------------------------------------- layers, optimisers, schedules

def small_model(bits=4, long_bits=8):
    cfg = twdh.TwdhConfig(image_dim=12, text_dim=10, n_labels=3, bits=bits, hidden_dim=16, dropout=0.1,
                          long_bits=long_bits, heads=8)
    return twdh.TWDH(cfg, torch.randn(2 * long_bits, 2 * bits))


def test_attention_over_one_token_is_its_value_and_output_projections():
    attention = torch.nn.MultiheadAttention(16, 8, batch_first=True)
    torch.nn.init.normal_(attention.in_proj_bias)  # nonzero biases, which the default leaves at 0
    x = torch.randn(5, 16)
    want = attention(x.unsqueeze(1), x.unsqueeze(1), x.unsqueeze(1), need_weights=False)[0].squeeze(1)
    torch.testing.assert_close(twdh.single_token_attention(attention, x), want)


def test_layers_follow_the_authors_hash_layer():
    model = small_model()
    for net, norm in ((model.image_net, torch.nn.BatchNorm1d), (model.text_net, torch.nn.LayerNorm)):
        assert net.attention.num_heads == 8 and net.attention.embed_dim == 16  # TwDH.py HashLayer(num_heads=8)
        assert isinstance(net.norm, norm)  # DCMHT's hash layer: BatchNorm for images, LayerNorm for texts
        assert tuple(net.fc.weight.shape) == (16, 16)  # to 2L
        # weights_init_kaiming: kaiming_uniform, fan_out 2L, zero bias
        assert float(net.fc.weight.detach().abs().max()) <= math.sqrt(6 / 16) and not net.fc.bias.any()
    # T is a buffer: saved with the weights, never trained
    assert "transform" in dict(model.named_buffers()) and all(p is not model.transform for p in model.parameters())
    model.eval()
    image, text = torch.randn(5, 12), torch.randn(5, 10)
    out = model(image, text)
    assert out["long_image"].shape == (5, 16) and out["short_text"].shape == (5, 8)
    torch.testing.assert_close(out["long_image"].view(5, 8, 2).sum(-1), torch.ones(5, 8))  # pair probabilities
    # the code: the pairwise softmax of P T, read as p+ - p-
    torch.testing.assert_close(out["short_image"], twdh.pair_softmax(out["long_image"] @ model.transform))
    torch.testing.assert_close(model.encode_image(image), twdh.pair_code(out["short_image"]))
    torch.testing.assert_close(model.encode_text(text), out["h_text"])
    with pytest.raises(ValueError, match="feature_dim 12 is not a multiple of params.heads 8"):
        twdh.TWDH(twdh.TwdhConfig(12, 10, 3, 4, hidden_dim=12, long_bits=8))


def test_second_steps_optimiser_schedule_and_defaults_are_the_authors():
    cfg = training.TrainConfig.from_dict(dict(twdh.METHOD.training_defaults, epochs=10))
    assert (cfg.lr, cfg.weight_decay, cfg.batch_size) == (1e-3, 0.2, 128)  # configs/TwDH/config.yaml
    params = twdh.METHOD.make_params(None)
    assert (params.quan_alpha, params.low_rate, params.warmup_proportion, params.heads) == (0.5, 0.0, 0.1, 8)
    model = small_model()
    (opt,) = twdh.METHOD.optimizers(model, cfg, params)
    assert isinstance(opt, torch.optim.AdamW)  # BertAdam's decoupled decay (docs/methods.md)
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-6
    assert {(g["lr"], g["weight_decay"]) for g in opt.param_groups} == {(1e-3, 0.2)}
    assert [{id(p) for p in g["params"]} for g in opt.param_groups] == [
        {id(p) for p in model.image_net.parameters()}, {id(p) for p in model.text_net.parameters()}]
    # warm-up over the first 10% of all steps, then cosine (BertAdam warmup_cosine)
    assert twdh.METHOD.lr_scale(cfg, params, 0.5) == pytest.approx(0.5)
    assert twdh.METHOD.lr_scale(cfg, params, 1.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.1)))


def test_first_steps_settings_optimiser_and_schedule_are_the_authors(separable_files):
    s = twdh.TransformSettings()
    # transform_matrix_generation/train.py: get_args and train(alpha=0.001); lr: runners/TwDH/README.md
    assert (s.long_bits, s.epochs, s.batch_size, s.lr, s.weight_decay, s.warmup_proportion, s.max_grad_norm,
            s.l1_weight, s.stop_when_lossless) == (512, 100, 200, 0.1, 0.2, 0.1, 1.0, 1e-3, True)
    opt = twdh.transform_optimizer(torch.nn.Parameter(torch.zeros(4, 2)), s)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.98)
    assert (opt.defaults["eps"], opt.defaults["lr"], opt.defaults["weight_decay"]) == (1e-6, 0.1, 0.2)
    # the run's epochs start at warmup_cosine's rate: 10 epochs of one step each (64 labels, batch 200)
    data = training.load_split(separable_files["pairs"], separable_files["features"], "train")
    made = twdh.fit_transform(BITS, {"long_bits": 8, "epochs": 10, "stop_when_lossless": False}, data)
    lrs = [h["lr"] for h in made["summary"]["history"]]
    assert lrs[0] == 0.0 and lrs[1] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 0.1)))
    assert lrs[5] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    # the params' first-step settings are resolved, and an unknown one is refused by name
    assert twdh.METHOD.make_params({"transform": {"lr": 0.5}}).transform == {**vars(s), "lr": 0.5}
    with pytest.raises(ValueError, match=r"unknown settings of method twdh's params.transform \['learning_rate'\]"):
        twdh.METHOD.make_params({"transform": {"learning_rate": 0.1}})


def test_first_step_stops_once_lossless_and_its_gradient_is_clipped(separable_files, monkeypatch):
    data = training.load_split(separable_files["pairs"], separable_files["features"], "train")
    settings = {"long_bits": 8, "epochs": 200}
    made = twdh.fit_transform(BITS, settings, data)
    history = made["summary"]["history"]
    assert made["summary"]["lossless"] and len(history) < 200  # measured: lossless after 22 epochs
    assert [h["lossless"] for h in history] == [False] * (len(history) - 1) + [True]
    t = made["tensors"]
    assert twdh.maps_losslessly(t["transform"], t["long_centers"], t["short_centers"])
    assert t["transform"].shape == (16, 2 * BITS) and t["short_centers"].shape == (4, BITS)
    # BertAdam clips T's gradient to norm max_grad_norm before every step
    norms = []
    real = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda p, max_norm: norms.append(max_norm) or real(p, max_norm))
    twdh.fit_transform(BITS, {**settings, "epochs": 3, "max_grad_norm": 0.5}, data)
    assert norms == [0.5] * 3


# --------------------------------------------------------------------------- end to end

PARAMS = dict(epochs=15, batch_size=32, feature_dim=32, lr=1e-2, dropout=0.0, seed=0)


def first_stage(files, tmp_path, text):
    """The first step at its defaults (512-bit long codes), for the second step's run."""
    path = tmp_path / "first_stage.pt"
    run_first_stage(files["pairs"], files["features"], path, "twdh", BITS, {"text": text}, dataset="separable")
    return path


@pytest.mark.parametrize("text", ["bow", "clip"])
def test_twdh_trains_saves_and_encodes(separable_files, tmp_path, text):
    stage = first_stage(separable_files, tmp_path, text)
    result, score = train_rebuild_encode(separable_files, tmp_path, "twdh", text, PARAMS, first_stage=stage)
    # measured 0.92 (bow), 0.93 (clip) vs 0.41 for random codes
    assert score > random_codes_map(separable_files) + 0.3
    # the first step's transform went into the model unchanged
    assert torch.equal(result["state_dict"]["transform"], torch.load(stage)["tensors"]["transform"])
    assert result["method_params"]["transform"] == torch.load(stage)["settings"]


def test_interrupted_run_resumes_to_the_same_weights(separable_files, tmp_path, monkeypatch):
    # every batch draws its tie-breaking bits from torch's generator: killed in epoch 2, the resumed
    # run must take the generator's state from the checkpoint (the global RNG is scrambled before it)
    stage = first_stage(separable_files, tmp_path, "bow")
    params = {**PARAMS, "epochs": 3, "dropout": 0.1}
    assert_resumes_like_an_uninterrupted_run(
        lambda out: train_separable(separable_files, out, "twdh", "bow", params, first_stage=stage), tmp_path,
        monkeypatch, StatelessObjective, epoch=2)
