"""JDSH (Liu et al., SIGIR 2020; authors' code KaiserLew/JDSH): unsupervised, built on DJSRH.
A joint-modal similarity matrix fuses the batch's image and text affinities with a high-order
term; distribution-based similarity decision and weighting (DSDW) then strengthens the pairs in
the two tails of the similarity distribution; the codes' cosine similarities reconstruct the
result, with an extra pull between each image and its own text.

Here on the cached CLIP image features and the run's text input (bag-of-words or CLIP text).
The authors' image network is a hash layer on a frozen AlexNet, so it is a hash layer on the
cached features here (no trunk). The networks, the cosine affinity, the optimisers, the schedule
and the epoch-wise tanh sharpness are DJSRH's (egath.methods.djsrh), as in the authors' code.
Differences from the authors' code: docs/methods.md.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from egath.methods.base import Method, Range, constant_lr
from egath.methods.djsrh import (DJSRH, AffinityReconstruction, code_cosines, cosine_affinity,
                                 sgd_per_network, takes_both_signs)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimilarityDistribution:
    """The distribution of joint-modal similarities as DSDW models it: below its mode `loc` the
    left half of a Gaussian (standard deviation `scale_left`), above it the right half of a
    Laplace distribution (scale `scale_right`); `low` and `high` anchor the tail weights."""
    loc: float
    scale_left: float
    scale_right: float
    low: float
    high: float


@dataclass(frozen=True)
class JdshParams:
    # config/JDSH_MIRFlickr.json of KaiserLew/JDSH (NUS-WIDE: alpha 0.4, beta 0.3, lamb 0.3, L1 0.2)
    alpha: float = 0.5  # alpha: weight of the image affinity S_I
    beta: float = 0.1  # beta: weight of the text affinity S_T
    lamb: float = 0.4  # lamb: weight of the high-order affinity (S_H + S_H^T) / 2
    mu: float = 1.4  # mu: scale of the target S
    intra: float = 0.1  # INTRA: weight of the image-image and text-text reconstructions
    left_width: float = 2.0  # ALPHA: the left threshold is loc - ALPHA * scale_left
    right_width: float = 4.0  # BETA: the right threshold is loc + BETA * scale_right
    left_weight: float = 0.1  # L1: below the left threshold s -> (1 + L1 exp(low - s)) s
    right_weight: float = 0.2  # L2: above the right threshold s -> (1 + L2 exp(s - high)) s
    # The distribution (SimilarityDistribution). The authors fitted it offline to their features
    # (MIRFlickr: LOC_LEFT = LOC_RIGHT -0.49, SCALE_LEFT 0.019, SCALE_RIGHT 0.088, MIN -0.52,
    # MAX 0.68); left unset (null), it is fitted to this run's training features when built.
    loc: float | None = None
    scale_left: float | None = None
    scale_right: float | None = None
    low: float | None = None
    high: float | None = None
    text_lr_ratio: float = 1.0  # LR_TXT / LR_IMG = 0.01 / 0.01
    momentum: float = 0.9  # MOMENTUM of both SGD optimisers

    def __post_init__(self):
        given = [getattr(self, f.name) is not None for f in fields(SimilarityDistribution)]
        if any(given) and not all(given):
            raise ValueError("jdsh params loc, scale_left, scale_right, low and high are set together "
                             "(the authors' fitted distribution) or not at all (fitted to the data)")

    def distribution(self) -> SimilarityDistribution | None:
        if self.loc is None:
            return None
        return SimilarityDistribution(*(float(getattr(self, f.name)) for f in fields(SimilarityDistribution)))


# --------------------------------------------------------------------------- similarity


def joint_modal_similarity(image: torch.Tensor, text: torch.Tensor, alpha: float, beta: float,
                           lamb: float, signed: tuple[bool, bool] = (False, False)) -> torch.Tensor:
    """JDSH's joint-modal similarity (B, B) before DSDW:
    S = alpha S_I + beta S_T + lamb (S_H + S_H^T) / 2,  S_H[i, j] = cos(S_I[i, :], S_T[j, :]),
    S_I, S_T the cosine affinities of the image and text features, each `signed` or not
    (egath.methods.djsrh.cosine_affinity)."""
    s_image, s_text = cosine_affinity(image, signed[0]), cosine_affinity(text, signed[1])
    s_high = code_cosines(s_image, s_text)  # row-wise cosines: how alike two samples' neighbourhoods are
    return alpha * s_image + beta * s_text + lamb * (s_high + s_high.T) / 2


def half_sample_mode(values: np.ndarray) -> float:
    """The half-sample mode (Bickel & Fruehwirth 2006): keep the densest half of the sorted values
    (the half with the smallest range) until three or fewer remain. Needs no bins."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    if x.size == 0:
        raise ValueError("the mode of no values")
    while x.size > 3:
        half = (x.size + 1) // 2
        widths = x[half - 1:] - x[:x.size - half + 1]
        start = int(np.argmin(widths))
        x = x[start:start + half]
    if x.size == 3:
        left, right = x[1] - x[0], x[2] - x[1]
        x = x[:2] if left < right else x[1:] if right < left else x[1:2]
    return float(x.mean())


def fit_distribution(values: np.ndarray) -> SimilarityDistribution:
    """DSDW's model of the similarities: loc the mode, scale_left the root mean square of the
    deviations below it (Gaussian half), scale_right the mean deviation above it (Laplace half),
    low and high the smallest and largest similarity."""
    values = np.asarray(values, dtype=np.float64)
    loc = half_sample_mode(values)
    below, above = loc - values[values < loc], values[values > loc] - loc
    return SimilarityDistribution(
        loc=loc, scale_left=float(np.sqrt(np.mean(below ** 2))) if below.size else 0.0,
        scale_right=float(np.mean(above)) if above.size else 0.0,
        low=float(values.min()), high=float(values.max()))


@torch.no_grad()
def training_similarities(image: torch.Tensor, text: torch.Tensor, params: JdshParams, batch_size: int,
                          seed: int) -> np.ndarray:
    """The off-diagonal joint-modal similarities of one pass over the training features in random
    batches of the training batch size (the high-order term depends on the batch)."""
    n = image.shape[0]
    signed = (takes_both_signs(image), takes_both_signs(text))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(image.device)
    pooled = []
    for batch in order.split(batch_size):
        s = joint_modal_similarity(image[batch], text[batch], params.alpha, params.beta, params.lamb, signed)
        off_diagonal = ~torch.eye(len(batch), dtype=torch.bool, device=s.device)
        pooled.append(s[off_diagonal].double().cpu())
    values = torch.cat(pooled).numpy()
    if values.size == 0:
        raise ValueError(f"jdsh needs batches of at least two training pairs to fit its similarity "
                         f"distribution (n_train {n}, batch_size {batch_size})")
    return values


def dsdw(s: torch.Tensor, dist: SimilarityDistribution, params: JdshParams) -> torch.Tensor:
    """Distribution-based similarity decision and weighting: a similarity below
    loc - left_width scale_left is a confident dissimilar pair, multiplied by
    1 + left_weight exp(low - s); then one above loc + right_width scale_right a confident similar
    pair, multiplied by 1 + right_weight exp(s - high); the rest is kept. In this order, as the
    authors' code (the second test sees the first's result)."""
    left = dist.loc - params.left_width * dist.scale_left
    right = dist.loc + params.right_width * dist.scale_right
    s = torch.where(s < left, (1 + params.left_weight * torch.exp(dist.low - s)) * s, s)
    return torch.where(s > right, (1 + params.right_weight * torch.exp(s - dist.high)) * s, s)


def jdsh_loss(h_image: torch.Tensor, h_text: torch.Tensor, s: torch.Tensor,
              intra: float) -> dict[str, torch.Tensor]:
    """intra (mse(C_II, S) + mse(C_TT, S)) + mse(C_IT, S) + mse(C_TI, S) - mean_i cos(h_I_i, h_T_i),
    C_ab = code_cosines(h_a, h_b), mse the mean over the B x B entries."""
    terms = {"image_image": F.mse_loss(code_cosines(h_image, h_image), s),
             "text_text": F.mse_loss(code_cosines(h_text, h_text), s),
             "cross": F.mse_loss(code_cosines(h_image, h_text), s) + F.mse_loss(code_cosines(h_text, h_image), s),
             "pair": -(F.normalize(h_image, dim=1) * F.normalize(h_text, dim=1)).sum(1).mean()}
    terms["total"] = intra * (terms["image_image"] + terms["text_text"]) + terms["cross"] + terms["pair"]
    return terms


class JdshObjective(AffinityReconstruction):
    def __init__(self, model, features, params: JdshParams, distribution: SimilarityDistribution):
        super().__init__(model, features, params)
        self.distribution = distribution

    def target(self, index):
        p = self.params
        s = joint_modal_similarity(self.image[index], self.text[index], p.alpha, p.beta, p.lamb, self.signed)
        return p.mu * dsdw(s, self.distribution, p)

    def reconstruction(self, h_image, h_text, s):
        return jdsh_loss(h_image, h_text, s, self.params.intra)


class JDSH(DJSRH):
    """DJSRH's networks without the image trunk: JDSH's image network is a hash layer on a frozen
    backbone (models.py), its text network DJSRH's MLP."""


def build(bits: int, cfg, params: JdshParams, data, graph):
    model = JDSH.for_data(bits, cfg, data, image_trunk=False)
    features = (data.image, data.text)
    distribution = params.distribution()
    if distribution is None:
        distribution = fit_distribution(training_similarities(*features, params, cfg.batch_size, cfg.seed))
        log.info("jdsh similarity distribution fitted to the training features: %s", distribution)
    return model, JdshObjective(model, features, params, distribution)


METHOD = Method(
    name="jdsh", kind="unsupervised", source="KaiserLew/JDSH",
    summary="joint-modal similarity alpha S_I + beta S_T + lamb (S_H + S_H^T)/2 with distribution-based "
            "weighting of its tails (DSDW), scaled by mu; MSE of the codes' cosines to it minus the "
            "image-text pair cosine",
    build=build, from_checkpoint=JDSH.from_checkpoint, params=JdshParams,
    optimizers=sgd_per_network, lr_scale=constant_lr,
    # config/JDSH_MIRFlickr.json: LR_IMG, WEIGHT_DECAY, BATCH_SIZE; models.py: TxtNet 4096 wide
    training_defaults={"lr": 1e-2, "weight_decay": 5e-4, "batch_size": 32, "feature_dim": 4096},
    tuning_space={"lr": Range(1e-3, 1e-1), "intra": Range(0.01, 1.0)})
