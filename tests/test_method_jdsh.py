"""Tests for JDSH (egath.methods.jdsh): the joint-modal similarity, DSDW and the loss on
hand-computed cases and against brute-force loops (value and gradient), the fit of the similarity
distribution, label-free training, the authors' optimisers, and a run trained end to end, rebuilt,
encoded, and resumed after an interruption (settings and helpers shared with tests/test_method_djsrh.py)."""

import math

import numpy as np
import pytest
import torch

from egath import training
from egath.methods import jdsh
from egath.methods.jdsh import SimilarityDistribution
from separable import BITS, assert_grad_close, random_codes_map, train_rebuild_encode
from test_method_djsrh import PARAMS, assert_resumes_to_the_same_weights, assert_sgd_per_network, features, model_for

SIN_PI_8 = math.sin(math.pi / 8)  # 0.382683


# --------------------------------------------------------------------------- hand-computed cases

def test_joint_modal_similarity_by_hand():
    # images e1, e2: S_I = [[1, -1], [-1, 1]]. texts (1, 0), (1, 1): cosine 1/sqrt(2), so
    # S_T = [[1, a], [a, 1]], a = sqrt(2) - 1 = tan(pi/8).
    # S_H[i, j] = cos(S_I row i, S_T row j): row (1, -1) is at -45 degrees, (1, a) at 22.5, (a, 1) at
    # 67.5: S_H = [[c, -c], [-c, c]], c = cos(67.5 deg) = sin(pi/8) = 0.382683 (symmetric).
    # alpha 0.5, beta 0.1, lamb 0.4: diagonal 0.5 + 0.1 + 0.4 c = 0.753073;
    # off-diagonal -0.5 + 0.1 a - 0.4 c = -0.611652
    a = math.sqrt(2) - 1
    s = jdsh.joint_modal_similarity(torch.eye(2, dtype=torch.float64),
                                    torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64), 0.5, 0.1, 0.4)
    diagonal, off = 0.6 + 0.4 * SIN_PI_8, -0.5 + 0.1 * a - 0.4 * SIN_PI_8
    torch.testing.assert_close(s, torch.tensor([[diagonal, off], [off, diagonal]], dtype=torch.float64))
    assert diagonal == pytest.approx(0.753073, abs=1e-6) and off == pytest.approx(-0.611652, abs=1e-6)


def test_dsdw_by_hand():
    # loc 0, scale_left 0.1, scale_right 0.1: thresholds 0 - 2 * 0.1 = -0.2 and 0 + 4 * 0.1 = 0.4.
    # -0.5 < -0.2: (1 + 0.1 exp(-1 + 0.5)) * -0.5 = -0.530327;  -0.2 (on the threshold), -0.1, 0.3, 0.4: kept;
    # 0.5 > 0.4: (1 + 0.2 exp(0.5 - 1)) * 0.5 = 0.560653
    dist = SimilarityDistribution(loc=0.0, scale_left=0.1, scale_right=0.1, low=-1.0, high=1.0)
    s = torch.tensor([-0.5, -0.2, -0.1, 0.3, 0.4, 0.5], dtype=torch.float64)
    weighted = jdsh.dsdw(s, dist, jdsh.JdshParams())
    expected = [-0.5 * (1 + 0.1 * math.exp(-0.5)), -0.2, -0.1, 0.3, 0.4, 0.5 * (1 + 0.2 * math.exp(-0.5))]
    torch.testing.assert_close(weighted, torch.tensor(expected, dtype=torch.float64))
    assert expected[0] == pytest.approx(-0.530327, abs=1e-6) and expected[-1] == pytest.approx(0.560653, abs=1e-6)
    # the right test sees the left weighting's result: thresholds 0.30 and 0.32; 0.299 is weighted
    # 1 + 0.1 exp(0) to 0.3289, above 0.32, then 1 + 0.2 exp(0.3289 - 1) to 0.362523
    dist = SimilarityDistribution(loc=0.32, scale_left=0.01, scale_right=0.0, low=0.299, high=1.0)
    weighted = jdsh.dsdw(torch.tensor([0.299], dtype=torch.float64), dist, jdsh.JdshParams())
    assert float(weighted) == pytest.approx(0.3289 * (1 + 0.2 * math.exp(0.3289 - 1))) == pytest.approx(0.362523, abs=1e-6)


def test_jdsh_loss_by_hand():
    # image codes e1, e2; text codes both along e1; target S = I:
    # C_II = I: 0; C_TT = ones: (0 + 1 + 1 + 0) / 4 = 0.5;
    # C_IT = [[1, 1], [0, 0]]: 0.5 and C_TI = [[1, 0], [1, 0]]: 0.5, cross = 1;
    # pair = -(cos(e1, e1) + cos(e2, e1)) / 2 = -0.5;  total = 0.1 (0 + 0.5) + 1 - 0.5 = 0.55
    terms = jdsh.jdsh_loss(torch.eye(2), torch.tensor([[0.5, 0.0], [0.9, 0.0]]), torch.eye(2), intra=0.1)
    assert float(terms["image_image"]) == 0
    assert float(terms["text_text"]) == pytest.approx(0.5)
    assert float(terms["cross"]) == pytest.approx(1.0)
    assert float(terms["pair"]) == pytest.approx(-0.5)
    assert float(terms["total"]) == pytest.approx(0.55)


@pytest.mark.parametrize("values, mode", [
    ([0.0, 1.0, 1.25, 1.5, 5.0, 9.0], 1.25),  # densest half (1, 1.25, 1.5), evenly spaced: the middle
    ([0.0, 1.0, 1.25, 2.0, 5.0], 1.125),  # densest half (1, 1.25, 2): the closer two, (1 + 1.25) / 2
    ([3.0], 3.0),
])
def test_half_sample_mode_by_hand(values, mode):
    assert jdsh.half_sample_mode(np.array(values)) == pytest.approx(mode)


def test_fit_recovers_a_gaussian_left_and_laplace_right():
    # the authors' MIRFlickr distribution: mode -0.49, Gaussian sd 0.019 below, Laplace scale 0.088 above;
    # a sample falls below the mode with probability p, which makes the density continuous there
    rng = np.random.default_rng(0)
    n, loc, sd, scale = 100_000, -0.49, 0.019, 0.088
    p = 1 / (1 + 2 * scale / (sd * math.sqrt(2 * math.pi)))
    below = rng.random(n) < p
    values = np.where(below, loc - np.abs(rng.normal(0, sd, n)), loc + rng.exponential(scale, n))
    fit = jdsh.fit_distribution(values)
    assert fit.loc == pytest.approx(loc, abs=0.004)
    assert fit.scale_left == pytest.approx(sd, rel=0.1)
    assert fit.scale_right == pytest.approx(scale, rel=0.05)
    assert (fit.low, fit.high) == (values.min(), values.max())


# --------------------------------------------------------------------------- brute force

def brute_force_jdsh(image, text, h_image, h_text, p, dist, image_set, text_set):
    def cos(a, b):
        return (a * b).sum() / (a.norm() * b.norm())

    def affinity(x, training_set):
        # the authors' 2 cos - 1 for non-negative features; the cosine itself for signed ones
        shift = 0 if (training_set < 0).any() else 1
        return torch.stack([torch.stack([(1 + shift) * cos(x[i], x[j]) - shift for j in range(n)]) for i in range(n)])

    n = image.shape[0]
    s_image, s_text = affinity(image, image_set), affinity(text, text_set)
    left, right = dist.loc - p.left_width * dist.scale_left, dist.loc + p.right_width * dist.scale_right
    total = h_image.new_zeros(())
    regions = set()
    for i in range(n):
        for j in range(n):
            high = (cos(s_image[i], s_text[j]) + cos(s_image[j], s_text[i])) / 2
            s = p.alpha * s_image[i, j] + p.beta * s_text[i, j] + p.lamb * high
            region = "kept"
            if s < left:
                s, region = s * (1 + p.left_weight * math.exp(dist.low - float(s))), "left"
            if s > right:  # after the left weighting, as the authors' in-place updates
                s, region = s * (1 + p.right_weight * math.exp(float(s) - dist.high)), "right"
            regions.add(region)
            s = p.mu * s
            total = total + (p.intra * (cos(h_image[i], h_image[j]) - s) ** 2
                             + p.intra * (cos(h_text[i], h_text[j]) - s) ** 2
                             + (cos(h_image[i], h_text[j]) - s) ** 2 + (cos(h_text[i], h_image[j]) - s) ** 2) / n ** 2
    total = total - sum(cos(h_image[i], h_text[i]) for i in range(n)) / n
    return total, regions


def test_jdsh_objective_matches_brute_force_value_and_gradient():
    image, text = features(9, 5, 0), features(9, 4, 1).abs()
    params = jdsh.JdshParams(alpha=0.5, beta=0.2, lamb=0.3, mu=1.4, intra=0.2)
    dist = SimilarityDistribution(loc=0.0, scale_left=0.1, scale_right=0.05, low=-1.0, high=1.0)
    objective = jdsh.JdshObjective(None, (image, text), params, dist)
    index = torch.tensor([7, 2, 4, 0, 5, 8])
    h_image = features(6, 6, 2).tanh().requires_grad_()
    h_text = features(6, 6, 3).tanh().requires_grad_()
    fast = objective.loss({"h_image": h_image, "h_text": h_text}, torch.zeros(6, 3), index)["total"]
    slow, regions = brute_force_jdsh(image[index], text[index], h_image, h_text, params, dist, image, text)
    assert regions == {"left", "kept", "right"}  # every branch of DSDW is exercised
    torch.testing.assert_close(fast, slow)
    assert_grad_close(fast, slow, (h_image, h_text))


def test_loss_reads_no_labels():
    image, text = features(8, 5, 0), features(8, 4, 1)
    labels = torch.eye(4).repeat(2, 1)
    params = jdsh.JdshParams()
    distribution = jdsh.fit_distribution(jdsh.training_similarities(image, text, params, 4, 0))
    objective = jdsh.JdshObjective(None, (image, text), params, distribution)
    out = {"h_image": features(8, 6, 2).tanh(), "h_text": features(8, 6, 3).tanh()}
    shuffled = labels[torch.randperm(8, generator=torch.Generator().manual_seed(0))]
    assert not torch.equal(shuffled, labels)
    a, b = objective.loss(out, labels, torch.arange(8)), objective.loss(out, shuffled, torch.arange(8))
    assert all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- distribution, model, optimisers

def test_training_similarities_pool_the_off_diagonal_of_each_batch():
    image, text = features(10, 5, 0), features(10, 4, 1)
    values = jdsh.training_similarities(image, text, jdsh.JdshParams(), batch_size=4, seed=3)
    assert values.shape == (4 * 3 + 4 * 3 + 2 * 1,)  # batches of 4, 4 and 2
    np.testing.assert_array_equal(values, jdsh.training_similarities(image, text, jdsh.JdshParams(), 4, 3))
    first = torch.randperm(10, generator=torch.Generator().manual_seed(3))[:4]
    s = jdsh.joint_modal_similarity(image[first], text[first], 0.5, 0.1, 0.4, signed=(True, True))
    np.testing.assert_allclose(values[:12], s[~torch.eye(4, dtype=torch.bool)].numpy())
    with pytest.raises(ValueError, match="at least two training pairs"):
        jdsh.training_similarities(image[:1], text[:1], jdsh.JdshParams(), 4, 0)


def test_distribution_is_fitted_unless_given():
    # config/JDSH_MIRFlickr.json: LOC_LEFT (= LOC_RIGHT), SCALE_LEFT, SCALE_RIGHT, MIN, MAX
    authors = {"loc": -0.49, "scale_left": 0.019, "scale_right": 0.088, "low": -0.52, "high": 0.68}
    with pytest.raises(ValueError, match="set together"):
        jdsh.METHOD.make_params({"loc": -0.49})
    cfg = training.TrainConfig.from_dict({**jdsh.METHOD.training_defaults, "feature_dim": 8, "batch_size": 4})
    data = training.TrainingData(features(10, 5, 0, torch.float32), features(10, 4, 1, torch.float32),
                                 torch.zeros(10, 2))
    _, given = jdsh.METHOD.build(BITS, cfg, jdsh.METHOD.make_params(authors), data, None)
    assert given.distribution == SimilarityDistribution(**authors)
    _, fitted = jdsh.METHOD.build(BITS, cfg, jdsh.METHOD.make_params({}), data, None)
    assert fitted.distribution == jdsh.fit_distribution(
        jdsh.training_similarities(data.image, data.text, jdsh.JdshParams(), batch_size=4, seed=cfg.seed))


def test_jdsh_networks_follow_the_authors_layers():
    _, _, model, _ = model_for(jdsh.METHOD)
    # a hash layer on the frozen image features; DJSRH's text MLP (fc1 V -> hidden, fc2 hidden -> K)
    assert isinstance(model.image_net, torch.nn.Linear)
    assert (model.image_net.in_features, model.image_net.out_features) == (10, BITS)
    text_layers = [m for m in model.text_net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in text_layers] == [(7, 16), (16, BITS)]


def test_jdsh_optimizers_are_the_authors():
    # config/JDSH_MIRFlickr.json: LR_IMG 0.01, LR_TXT 0.01, MOMENTUM 0.9, WEIGHT_DECAY 5e-4, constant
    assert_sgd_per_network(jdsh.METHOD, image_lr=1e-2, text_lr=1e-2)


# --------------------------------------------------------------------------- end to end

@pytest.mark.parametrize("text", ["clip", "bow"])
def test_jdsh_trains_saves_and_encodes(separable_files, tmp_path, text):
    _, score = train_rebuild_encode(separable_files, tmp_path, "jdsh", text, PARAMS)
    # unsupervised, on clustered features: measured 0.92 (clip and bow) against 0.41 for random codes
    # (seeds 1 and 2: 0.90-0.93)
    assert score > random_codes_map(separable_files) + 0.4


def test_jdsh_resumes(separable_files, tmp_path, monkeypatch):
    assert_resumes_to_the_same_weights(separable_files, tmp_path, monkeypatch, "jdsh")
