"""DSPH (Huo et al., 2023; authors' code QinLab-WFU/DSPH): learnable label proxies and HyP^2's
hybrid proxy-pair loss on tanh codes of both modalities.

Here on frozen cached CLIP features: a trunk (egath.methods.base.trunk) stands in for the CLIP
the authors fine-tune. Differences from the authors' code: docs/methods.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from egath.methods.base import (HashNets, HeadConfig, Method, Range, StatelessObjective, bert_adam,
                                label_similarity, trunk, warmup_cosine)

DSPH_ALPHA = 0.8  # weight of the irrelevant-pair regularisation (DSPH repo default)
DSPH_HASH_DROPOUT = 0.2  # dropout before tanh in DSPH's hash layer


@dataclass(frozen=True)
class DsphParams:
    alpha: float = DSPH_ALPHA
    warmup_proportion: float = 0.1  # utils/get_args.py --warmup-proportion
    proxy_lr: float = 0.02  # train/hash_train.py: SGD of the HyP proxies, a constant rate
    proxy_momentum: float = 0.9  # train/hash_train.py
    proxy_weight_decay: float = 5e-4  # train/hash_train.py


def _griesmer_distance(bits: int, k: int) -> int:
    """Largest d allowed by the Griesmer bound sum_{i<k} ceil(d / 2^i) <= bits for a [bits, k] code."""
    d = 0
    while d < bits and sum(-(-(d + 1) // 2 ** i) for i in range(k)) <= bits:
        d += 1
    return d


# [n, k] cells of the usual bit grid where the Griesmer bound is not attained (Helleseth 1981):
# best binary linear code minimum distances from the code tables.
_BEST_KNOWN_DISTANCE = {(16, 6): 6, (32, 7): 14}


def proxy_threshold(bits: int, n_labels: int) -> float:
    """zeta of HyP^2 / DSPH: the cosine between the two nearest of 2^k well-spread K-bit codes,
    k = ceil(log2 C): zeta = 1 - 2 d / K, d the minimum distance of the best binary linear
    [K, k] code. DSPH reads it from a code table (utils/codetable.xlsx); here d comes from the
    Griesmer bound, corrected where the bound is not attained. Checked against that table: the
    same zeta at 16, 32, 64 and 128 bits for 2 to 128 labels (tests/test_baselines.py); the
    bound overestimates d in some other cells (e.g. 8 bits, 17-32 labels). For k <= log2 K + 1
    (MIRFlickr, NUS-WIDE at 16-64 bits, COCO at 64) d = K / 2 and zeta = 0."""
    k = max(1, math.ceil(math.log2(max(n_labels, 2))))
    d = _BEST_KNOWN_DISTANCE.get((bits, k), _griesmer_distance(bits, k))
    return 1 - 2 * d / bits


class TanhHash(nn.Module):
    """DSPH's hash layer: h = tanh(dropout(W f + b))."""

    def __init__(self, in_dim: int, bits: int):
        super().__init__()
        self.fc = nn.Linear(in_dim, bits)
        self.dropout = nn.Dropout(DSPH_HASH_DROPOUT)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dropout(self.fc(f)))  # (B, K)


class TanhHashNets(HashNets):
    """Per modality: trunk -> tanh hash layer (h in (-1, 1)^K), with PyTorch's default Linear init."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.cfg = cfg
        self.image_net = nn.Sequential(trunk(cfg.image_dim, cfg), TanhHash(cfg.hidden_dim, cfg.bits))
        self.text_net = nn.Sequential(trunk(cfg.text_dim, cfg), TanhHash(cfg.hidden_dim, cfg.bits))


class DSPH(TanhHashNets):
    """TanhHashNets plus the learnable label proxies P (C, K), kept in the model so that the
    shared optimizer trains them (they are not needed for retrieval)."""

    def __init__(self, cfg: HeadConfig):
        super().__init__(cfg)
        self.proxies = nn.Parameter(torch.empty(cfg.n_labels, cfg.bits))
        nn.init.kaiming_normal_(self.proxies, mode="fan_out")  # as DSPH; only directions matter

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        return {**super().forward(image, text), "proxies": self.proxies}

    @classmethod
    def build(cls, bits: int, cfg, params: DsphParams, data):
        model = cls(HeadConfig.for_data(bits, cfg, data))
        threshold = proxy_threshold(bits, data.labels.shape[1])
        return model, StatelessObjective(lambda out, labels: dsph_loss(out, labels, threshold, params.alpha))


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.normalize(a, dim=1) @ F.normalize(b, dim=1).T


def dsph_proxy_term(h: torch.Tensor, proxies: torch.Tensor, labels: torch.Tensor, threshold: float):
    """sum_{y_ic=1} (1 - cos(h_i, p_c)) / |P| + sum_{y_ic=0} max(0, cos(h_i, p_c) - zeta) / |N|,
    |P|, |N| the numbers of positive and negative (sample, label) entries of the batch."""
    cos = _cosine(h, proxies)  # (B, C)
    y = labels.float()
    positive = (y * (1 - cos)).sum() / y.sum().clamp_min(1)
    negative = ((1 - y) * F.relu(cos - threshold)).sum() / (1 - y).sum().clamp_min(1)
    return positive + negative


def dsph_loss(out: dict[str, torch.Tensor], labels: torch.Tensor, threshold: float,
              alpha: float = DSPH_ALPHA) -> dict[str, torch.Tensor]:
    """DSPH (Huo et al. 2023), HyP^2's hybrid proxy-pair loss applied to both modalities:
    L = proxy(h_I) + proxy(h_T)
      + alpha * sum_{(a,b) in (I,I), (T,T), (I,T)} sum_{ij: s_ij=0} max(0, cos(a_i, b_j) - zeta) / |{s_ij=0}|
    where the irrelevant-pair term runs over the batch's samples with more than one label (as
    DSPH does: proxies alone cannot place multi-label samples), s_ij = l_i . l_j."""
    h_i, h_t = out["h_image"], out["h_text"]
    terms = {"proxy": dsph_proxy_term(h_i, out["proxies"], labels, threshold)
             + dsph_proxy_term(h_t, out["proxies"], labels, threshold)}
    multi = labels.sum(1) > 1
    irrelevant = (label_similarity(labels[multi], labels[multi]) == 0).float()  # (B', B')
    n_irrelevant = irrelevant.sum()
    if n_irrelevant > 0:
        a_i, a_t = h_i[multi], h_t[multi]
        terms["pair"] = alpha * sum((irrelevant * F.relu(_cosine(a, b) - threshold)).sum()
                                    for a, b in ((a_i, a_i), (a_t, a_t), (a_i, a_t))) / n_irrelevant
    else:
        terms["pair"] = h_i.new_zeros(())
    terms["total"] = terms["proxy"] + terms["pair"]
    return terms


def optimizers(model: DSPH, cfg, params: DsphParams) -> list[torch.optim.Optimizer]:
    """train/hash_train.py: BertAdam at lr 1e-3, weight decay 0.2 for the hash layers (the trunk,
    standing in for the CLIP it fine-tunes at 1e-5, at the same rate) and SGD for the proxies."""
    heads = bert_adam([{"params": model.image_net.parameters()}, {"params": model.text_net.parameters()}], cfg)
    proxies = torch.optim.SGD([{"params": [model.proxies], "scheduled": False}], lr=params.proxy_lr,
                              momentum=params.proxy_momentum, weight_decay=params.proxy_weight_decay)
    return [heads, proxies]


METHOD = Method(
    name="dsph", kind="supervised", source="QinLab-WFU/DSPH",
    summary="tanh hash layer and learnable label proxies; cosine proxy loss with threshold zeta "
            "plus an irrelevant-pair term on multi-label samples",
    build=lambda bits, cfg, params, data, graph: DSPH.build(bits, cfg, params, data),
    from_checkpoint=DSPH.from_checkpoint, params=DsphParams, optimizers=optimizers, lr_scale=warmup_cosine,
    # utils/get_args.py: --lr 0.001, --weight-decay 0.2, --batch-size 64
    training_defaults={"lr": 1e-3, "weight_decay": 0.2, "batch_size": 64},
    tuning_space={"lr": Range(1e-4, 1e-2), "alpha": Range(0.1, 3.0)})
