"""Tests for EGATH's objective (egath.methods.egath): NDCG weights, the weighted cosine triplet loss, quantization, the
combined objective and the discrete update of the code matrix B."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from egath.methods import egath as L
from egath.methods.base import binarize


# --------------------------------------------------------------------------- ndcg_weights

def test_ndcg_weights_by_hand():
    s = torch.tensor([[2.0, 1.0, 0.0],
                      [0.0, 1.0, 1.0]])
    # row 0: gains 2^s - 1 = (3, 1, 0); sorted (3, 1, 0); discounts log2(2, 3, 4) = (1, 1.58496, 2)
    #        Z = 3/1 + 1/1.58496 + 0 = 3.63093 -> w = (3, 1, 0) / 3.63093 = (0.82624, 0.27541, 0)
    # row 1: gains (0, 1, 1); sorted (1, 1, 0); Z = 1 + 1/1.58496 = 1.63093
    #        -> w = (0, 0.61315, 0.61315)
    z0 = 3 + 1 / math.log2(3)
    z1 = 1 + 1 / math.log2(3)
    expected = torch.tensor([[3 / z0, 1 / z0, 0.0], [0.0, 1 / z1, 1 / z1]])
    w = L.ndcg_weights(s)
    torch.testing.assert_close(w, expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(w[0, :2], torch.tensor([0.82624, 0.27541]), rtol=0, atol=1e-5)
    torch.testing.assert_close(w[1, 1], torch.tensor(0.61315), rtol=0, atol=1e-5)


def test_ndcg_weights_zero_row_is_zero_not_nan():
    w = L.ndcg_weights(torch.zeros(2, 4))
    assert torch.equal(w, torch.zeros(2, 4))


# --------------------------------------------------------------------------- triplet loss

def brute_force_triplet(anchor, target, anchor_labels, target_labels, margin):
    """sum_{i,j,k: s_ij>0, s_ik=0} w_ij max(0, d_ij - d_ik + margin), d = 1 - cos, written as loops."""
    total = anchor.new_zeros(())
    n_a, n_t = anchor.shape[0], target.shape[0]
    al = anchor_labels.double().tolist()
    tl = target_labels.double().tolist()
    s = [[sum(x * y for x, y in zip(al[i], tl[j])) for j in range(n_t)] for i in range(n_a)]
    for i in range(n_a):
        gains = [2.0 ** v - 1 for v in s[i]]
        z = sum(g / math.log2(r + 2) for r, g in enumerate(sorted(gains, reverse=True)))

        def d(j):
            a, t = anchor[i], target[j]
            return 1 - (a * t).sum() / (a.norm() * t.norm())

        for j in range(n_t):
            if s[i][j] <= 0:
                continue
            w = gains[j] / z
            for k in range(n_t):
                if s[i][k] > 0:
                    continue
                total = total + w * torch.clamp(d(j) - d(k) + margin, min=0)
    return total


LABELS_A = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0]], dtype=torch.float32)
LABELS_T = torch.tensor([[1, 0, 0], [0, 1, 1], [0, 0, 1], [1, 1, 1]], dtype=torch.float32)


def test_triplet_loss_value_and_gradients_match_brute_force():
    g = torch.Generator().manual_seed(0)
    anchor = torch.randn(3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    margin = 0.4
    got = L.weighted_triplet_loss(anchor, target, LABELS_A, LABELS_T, margin)
    want = brute_force_triplet(anchor, target, LABELS_A, LABELS_T, margin)
    assert want.item() > 0.1  # the case has active triplets
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    got_grads = torch.autograd.grad(got, (anchor, target))
    want_grads = torch.autograd.grad(want, (anchor, target))
    for a, b in zip(got_grads, want_grads):
        assert b.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_triplet_loss_hand_case():
    # 1 anchor (label 0), targets: t0 shares label 0, t1 does not.
    anchor = torch.tensor([[1.0, 0.0]])
    target = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    # d(a, t0) = 1 - 0 = 1, d(a, t1) = 1 - 1 = 0; s = (1, 0) -> gains (1, 0), Z = 1, w_00 = 1
    # loss = 1 * max(0, 1 - 0 + 0.4) = 1.4
    loss = L.weighted_triplet_loss(anchor, target, torch.tensor([[1.0, 0.0]]),
                                   torch.tensor([[1.0, 0.0], [0.0, 1.0]]), 0.4)
    assert loss.item() == pytest.approx(1.4, abs=1e-6)
    # swap the targets: d_ij = 0, d_ik = 1 -> max(0, 0 - 1 + 0.4) = 0
    loss = L.weighted_triplet_loss(anchor, target.flip(0), torch.tensor([[1.0, 0.0]]),
                                   torch.tensor([[1.0, 0.0], [0.0, 1.0]]), 0.4)
    assert loss.item() == pytest.approx(0.0, abs=1e-7)


def test_triplet_loss_gradcheck_float64():
    g = torch.Generator().manual_seed(1)
    anchor = torch.randn(3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():  # no hinge near its kink, where finite differences are meaningless
        d = 1 - F.cosine_similarity(anchor.unsqueeze(1), target.unsqueeze(0), dim=-1)
        hinge_args = d.unsqueeze(2) - d.unsqueeze(1) + 0.4
        assert hinge_args.abs().min() > 1e-3
    assert torch.autograd.gradcheck(
        lambda a, t: L.weighted_triplet_loss(a, t, LABELS_A, LABELS_T, 0.4), (anchor, target),
        eps=1e-6, atol=1e-5)


def test_no_triplet_when_all_items_share_labels():
    g = torch.Generator().manual_seed(2)
    anchor = torch.randn(3, 4, generator=g, requires_grad=True)
    target = torch.randn(5, 4, generator=g)
    labels_a = torch.ones(3, 2)
    labels_t = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    loss = L.weighted_triplet_loss(anchor, target, labels_a, labels_t, 0.4)
    assert loss.item() == 0.0
    (grad,) = torch.autograd.grad(loss, anchor)
    assert torch.equal(grad, torch.zeros_like(grad))


def test_no_triplet_when_nothing_is_relevant():
    anchor = torch.randn(2, 3)
    loss = L.weighted_triplet_loss(anchor, anchor, torch.tensor([[1.0, 0.0], [1.0, 0.0]]),
                                   torch.tensor([[0.0, 1.0], [0.0, 1.0]]), 0.4)
    assert loss.item() == 0.0


# --------------------------------------------------------------------------- quantization

def test_quantization_loss_by_hand():
    h = torch.tensor([[0.5, -0.5], [1.0, 0.0]])
    codes = torch.tensor([[1.0, -1.0], [1.0, 1.0]])
    # (1 - .5)^2 + (-1 + .5)^2 + 0^2 + (1 - 0)^2 = .25 + .25 + 0 + 1 = 1.5
    assert L.quantization_loss(h, codes).item() == pytest.approx(1.5)


# --------------------------------------------------------------------------- egath_loss

def make_out(seed=0, n=4, bits=3, c=2, logits=True):
    g = torch.Generator().manual_seed(seed)
    out = {"h_image": torch.tanh(torch.randn(n, bits, generator=g)),
           "h_text": torch.tanh(torch.randn(n, bits, generator=g))}
    if logits:
        out["label_logits"] = torch.randn(n, c, generator=g)
    labels = torch.tensor([[1, 0], [0, 1], [1, 1], [1, 0]], dtype=torch.float32)[:n]
    codes = torch.where(torch.randn(n, bits, generator=g) >= 0, 1.0, -1.0)
    return out, labels, codes


def test_egath_loss_total_is_weighted_sum():
    out, labels, codes = make_out()
    terms = L.egath_loss(out, labels, codes, margin=0.4, triplet_weight=2.0, quantization_weight=3.0,
                         classification_weight=5.0)
    assert set(terms) == {"triplet", "quantization", "classification", "total"}
    hi, ht = out["h_image"], out["h_text"]
    tri = sum(brute_force_triplet(a, t, labels, labels, 0.4)
              for a, t in ((hi, ht), (hi, hi), (ht, hi), (ht, ht)))
    quant = ((codes - hi) ** 2).sum() + ((codes - ht) ** 2).sum()
    p = torch.sigmoid(out["label_logits"])
    bce = -(labels * torch.log(p) + (1 - labels) * torch.log(1 - p)).mean()
    torch.testing.assert_close(terms["triplet"], tri.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(terms["quantization"], quant, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(terms["classification"], bce, rtol=1e-5, atol=1e-6)
    assert terms["triplet"].item() > 0
    torch.testing.assert_close(terms["total"], 2 * tri.float() + 3 * quant + 5 * bce, rtol=1e-5, atol=1e-5)


def test_egath_loss_without_triplet():
    out, labels, codes = make_out()
    terms = L.egath_loss(out, labels, codes, 0.4, 2.0, 3.0, 5.0, use_triplet=False)
    assert set(terms) == {"quantization", "classification", "total"}
    torch.testing.assert_close(terms["total"], 3 * terms["quantization"] + 5 * terms["classification"])


def test_egath_loss_without_logits_has_no_classification():
    out, labels, codes = make_out(logits=False)
    terms = L.egath_loss(out, labels, codes, 0.4, 2.0, 3.0, 5.0)
    assert set(terms) == {"triplet", "quantization", "total"}
    torch.testing.assert_close(terms["total"], 2 * terms["triplet"] + 3 * terms["quantization"])
    terms = L.egath_loss(out, labels, codes, 0.4, 2.0, 3.0, 5.0, use_triplet=False)
    assert set(terms) == {"quantization", "total"}
    torch.testing.assert_close(terms["total"], 3 * terms["quantization"])


# --------------------------------------------------------------------------- code update

def sign_pm(x):
    return torch.where(x >= 0, 1.0, -1.0)


def make_state(n=12, bits=4, c=3, seed=0, gamma=0.3):
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, c, generator=g) < 0.4).float()
    labels[torch.arange(n), torch.randint(c, (n,), generator=g)] = 1
    codes = sign_pm(torch.randn(n, bits, generator=g))
    aux = L.orthonormal_projection(torch.randn(n, bits, generator=g))
    mult = 0.1 * torch.randn(n, bits, generator=g)
    h_i = torch.tanh(torch.randn(n, bits, generator=g))
    h_t = torch.tanh(torch.randn(n, bits, generator=g))
    return L.CodeState(codes, aux, mult, gamma), labels, h_i, h_t


def objective_matrix(state, labels, h_i, h_t, lam, mu):
    """M = L R + gamma C - D + mu (H_I + H_T), R = (L^T L + lam I)^-1 L^T B, in float64 numpy."""
    Lm = labels.double().numpy()
    B = state.codes.double().numpy()
    R = np.linalg.inv(Lm.T @ Lm + lam * np.eye(Lm.shape[1])) @ Lm.T @ B
    return (Lm @ R + state.gamma * state.auxiliary.double().numpy() - state.multiplier.double().numpy()
            + mu * (h_i.double().numpy() + h_t.double().numpy()))


def test_update_codes_state_rules():
    state, labels, h_i, h_t = make_state()
    new = L.update_codes(state, labels, h_i, h_t, lam=1.0, mu=0.5, rho=1.05)
    assert set(torch.unique(new.codes).tolist()) <= {-1.0, 1.0}
    assert new.codes.shape == state.codes.shape
    # C has orthonormal columns
    torch.testing.assert_close(new.auxiliary.T @ new.auxiliary, torch.eye(4), rtol=0, atol=1e-5)
    # gamma grows by rho
    assert new.gamma == pytest.approx(0.3 * 1.05)
    # D <- D + gamma (B - C), with the gamma before the update
    torch.testing.assert_close(new.multiplier, state.multiplier + 0.3 * (new.codes - new.auxiliary))
    # C is the orthonormal projection of B + D / gamma
    torch.testing.assert_close(new.auxiliary,
                               L.orthonormal_projection(new.codes + state.multiplier / 0.3))
    # the input state is not modified
    assert state.gamma == 0.3


def test_update_codes_maximises_trace():
    state, labels, h_i, h_t = make_state(seed=3)
    lam, mu = 1.0, 0.5
    new = L.update_codes(state, labels, h_i, h_t, lam=lam, mu=mu, rho=1.05)
    m = objective_matrix(state, labels, h_i, h_t, lam, mu)
    b = new.codes.double().numpy()
    best = np.trace(b.T @ m)
    assert best == pytest.approx(np.abs(m).sum(), rel=1e-6)  # sum |M_ij|: the maximum possible
    rng = np.random.default_rng(0)
    for _ in range(200):
        x = rng.choice([-1.0, 1.0], size=b.shape)
        assert np.trace(x.T @ m) <= best + 1e-9
    for i in range(b.shape[0]):
        for j in range(b.shape[1]):
            flipped = b.copy()
            flipped[i, j] *= -1
            # one flip changes the trace by -2 |M_ij|
            assert np.trace(flipped.T @ m) == pytest.approx(best - 2 * abs(m[i, j]), abs=1e-9)
            assert np.trace(flipped.T @ m) < best


def test_update_codes_sign_of_zero_is_plus_one():
    n, bits = 6, 3
    gamma = 0.5
    aux = L.orthonormal_projection(torch.randn(n, bits, generator=torch.Generator().manual_seed(0)))
    state = L.CodeState(sign_pm(torch.randn(n, bits)), aux, gamma * aux, gamma)
    labels = torch.zeros(n, 2)  # L = 0 -> R = 0 -> L R = 0
    h = torch.tanh(torch.randn(n, bits))
    # argument = 0 + gamma C - gamma C + mu (h - h) = 0 exactly
    new = L.update_codes(state, labels, h, -h, lam=1.0, mu=0.5, rho=1.05)
    assert torch.equal(new.codes, torch.ones(n, bits))
    assert not (new.codes == 0).any()


def test_codestate_initial_and_binarize():
    s = L.CodeState.initial(10, 4, 0.01, torch.Generator().manual_seed(0))
    assert s.codes.shape == (10, 4) and set(torch.unique(s.codes).tolist()) <= {-1.0, 1.0}
    assert torch.equal(s.auxiliary, s.codes) and torch.equal(s.multiplier, torch.zeros(10, 4))
    assert s.gamma == 0.01
    assert torch.equal(binarize(torch.tensor([-0.5, 0.0, -0.0, 2.0])), torch.tensor([-1.0, 1.0, 1.0, 1.0]))


# --------------------------------------------------------------------------- projection

def test_orthonormal_projection_is_nearest():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(8, 3, generator=g, dtype=torch.float64)
    p = L.orthonormal_projection(m)
    assert p.shape == (8, 3)
    torch.testing.assert_close(p.T @ p, torch.eye(3, dtype=torch.float64))
    best = torch.linalg.norm(m - p)
    for _ in range(50):
        q, _ = torch.linalg.qr(torch.randn(8, 3, generator=g, dtype=torch.float64))
        assert torch.linalg.norm(m - q) >= best
    # small rotations of p within the orthonormal matrices are farther too
    for _ in range(20):
        skew = torch.randn(3, 3, generator=g, dtype=torch.float64) * 1e-2
        rot = torch.linalg.matrix_exp(skew - skew.T)
        assert torch.linalg.norm(m - p @ rot) >= best
    # the polar factor: m = p (m^T m)^{1/2}
    evals, evecs = torch.linalg.eigh(m.T @ m)
    root = evecs @ torch.diag(evals.sqrt()) @ evecs.T
    torch.testing.assert_close(p @ root, m)


def test_orthonormal_projection_of_orthonormal_is_itself():
    q, _ = torch.linalg.qr(torch.randn(6, 2, dtype=torch.float64))
    torch.testing.assert_close(L.orthonormal_projection(q), q)


def run_code_updates(variant, epochs=300, n=40, bits=8, c=4, seed=0):
    """`epochs` B updates with fixed network outputs H_I, H_T, as at the end of a training that
    has settled: returns the multiplier's RMS and the share of flipped bits per update."""
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, c, generator=g) < 0.4).float()
    h_i, h_t = torch.tanh(torch.randn(n, bits, generator=g)), torch.tanh(torch.randn(n, bits, generator=g))
    state = L.CodeState.initial(n, bits, 0.01, g)
    multiplier_rms, flips = [], []
    for _ in range(epochs):
        new = L.update_codes(state, labels, h_i, h_t, lam=1.0, mu=0.5, rho=1.05, variant=variant)
        flips.append(float((new.codes != state.codes).float().mean()))
        multiplier_rms.append(float(new.multiplier.pow(2).mean().sqrt()))
        state = new
    return multiplier_rms, flips


def test_penalty_code_update_settles_over_300_epochs():
    multiplier_rms, flips = run_code_updates("penalty")
    assert max(multiplier_rms) == 0  # no multiplier to accumulate
    assert sum(flips[-250:]) == 0  # B reaches a fixed point and stays there


def test_gcdh_code_update_lets_the_multiplier_grow():
    # the reason the default differs: B = C cannot hold (C has entries ~ 1/sqrt(N)), so D grows
    multiplier_rms, flips = run_code_updates("gcdh", epochs=120)
    assert multiplier_rms[-1] > 2.5 * multiplier_rms[40] > 0  # measured: 0.42 at 40, 1.23 at 120
    assert sum(flips[-20:]) > 3 * sum(flips[20:40])  # and B flips more and more bits


def test_penalty_code_update_pulls_towards_decorrelated_codes():
    state, labels, _, _ = make_state(n=12, bits=4, c=3, seed=1)
    new = L.update_codes(state, labels, torch.zeros(12, 4), torch.zeros(12, 4), lam=1.0, mu=0.5, rho=1.05,
                         variant="penalty")
    # C = sqrt(N) proj(B): on B's scale, with C^T C = N I
    torch.testing.assert_close(new.auxiliary.T @ new.auxiliary, 12 * torch.eye(4), atol=1e-4, rtol=0)
    assert new.gamma == state.gamma
    with pytest.raises(ValueError, match="code_update"):
        L.update_codes(state, labels, torch.zeros(12, 4), torch.zeros(12, 4), 1.0, 0.5, 1.05, variant="admm")


def data_term(state, labels, h_i, h_t, lam, mu):
    """M = L R + mu (H_I + H_T), R = (L^T L + lam I)^-1 L^T B, in float64 numpy."""
    Lm = labels.double().numpy()
    R = np.linalg.inv(Lm.T @ Lm + lam * np.eye(Lm.shape[1])) @ Lm.T @ state.codes.double().numpy()
    return Lm @ R + mu * (h_i.double().numpy() + h_t.double().numpy())


@pytest.mark.parametrize("variant, pull", [("relative", 0.5), ("relative", 1.5), ("penalty", None)])
def test_bounded_updates_by_hand_and_their_pull_decides_bits(variant, pull):
    # B = sign(M + w C), w = pull rms(M) (relative) or gamma (penalty), with M from both modalities'
    # outputs; gamma and pull are large enough here that C decides some bits
    state, labels, h_i, h_t = make_state(n=16, bits=6, c=3, seed=4, gamma=0.8)
    state = L.CodeState(state.codes, L.orthonormal_projection(state.codes) * 4.0, torch.zeros(16, 6), 0.8)
    new = L.update_codes(state, labels, h_i, h_t, lam=1.0, mu=0.5, rho=1.05, variant=variant, pull=pull or 0.5)
    m = data_term(state, labels, h_i, h_t, 1.0, 0.5)
    weight = pull * np.sqrt((m ** 2).mean()) if variant == "relative" else 0.8
    want = np.where(m + weight * state.auxiliary.double().numpy() >= 0, 1.0, -1.0)
    np.testing.assert_array_equal(new.codes.numpy(), want)
    assert (np.where(m >= 0, 1.0, -1.0) != want).any()  # the C term changed B
    # C = sqrt(N) proj(B), on B's scale; no multiplier, gamma fixed
    torch.testing.assert_close(new.auxiliary, L.orthonormal_projection(new.codes) * 4.0)
    assert torch.equal(new.multiplier, torch.zeros(16, 6)) and new.gamma == 0.8


def test_relative_update_settles_and_gives_balanced_decorrelated_codes():
    multiplier_rms, flips = run_code_updates("relative")
    assert max(multiplier_rms) == 0 and sum(flips[-250:]) == 0  # a fixed point, bounded
    # with outputs that agree on every sample (all bits alike), the pull towards C spreads the bits
    g = torch.Generator().manual_seed(2)
    n, bits = 64, 8
    labels = torch.zeros(n, 4)
    labels[torch.arange(n), torch.randint(4, (n,), generator=g)] = 1
    h = torch.tanh(torch.randn(n, 1, generator=g).expand(n, bits) + 0.1 * torch.randn(n, bits, generator=g))

    def settled(pull):
        state = L.CodeState.initial(n, bits, 0.01, torch.Generator().manual_seed(0))
        for _ in range(30):
            state = L.update_codes(state, labels, h, h, 1.0, 0.5, 1.05, variant="relative", pull=pull)
        correlation = torch.corrcoef(state.codes.T).nan_to_num(1.0)
        return float(correlation[~torch.eye(bits, dtype=torch.bool)].abs().mean())

    assert settled(1.0) < 0.5 * settled(0.0)


def test_end_of_epoch_update_reads_both_modalities():
    from egath.training import TrainConfig

    state, labels, h_i, h_t = make_state(n=16, bits=6, c=3, seed=5)
    for variant in ("relative", "penalty", "gcdh"):
        cfg = TrainConfig(code_update=variant, code_gamma=0.3)
        objective = L.EgathObjective(cfg, labels, 6)
        objective.state = state
        objective.end_epoch(h_i, h_t)
        want = L.update_codes(state, labels, h_i, h_t, cfg.code_lambda, cfg.code_mu, cfg.code_rho, variant,
                              cfg.code_pull)
        assert torch.equal(objective.state.codes, want.codes)
        assert not torch.equal(want.codes, L.update_codes(state, labels, h_i, h_i, cfg.code_lambda, cfg.code_mu,
                                                          cfg.code_rho, variant, cfg.code_pull).codes)
