"""DNPH (Huo et al., ACM TOMM 2024; authors' code QinLab-WFU/OUR-DNPH): deep neighborhood-aware
proxy hashing with a uniform distribution constraint.

Per modality a tanh hash layer and a label classifier read the same feature; the loss is

    L = proxy + classification - w * uniform

- proxy: the codes of both modalities, unit length, against fixed random label proxies p_c (C, K),
  also unit length: d_ic = ||h_i - p_c||^2 + m [y_ic = 1], and each positive label costs
  -log softmax_c(-d_i)_c, summed over a sample's labels, averaged over the 2B codes;
- classification: cross-entropy of each modality's label scores (B, C) against the index of the
  sample's first label;
- uniform: each batch draws B random vertices of {-1, +1}^K, matches them one-to-one to the
  image codes and, separately, to the text codes so that the summed Euclidean distance is least
  (an assignment problem), and rewards <h_i, target_i>, averaged over the batch: the codes spread
  over the hypercube.

Here on frozen cached CLIP features: a trunk (egath.methods.base.trunk) stands in for the CLIP the
authors fine-tune, and feeds both the hash layer and the classifier, as CLIP's pooled embedding
does theirs. Differences from the authors' code: docs/methods.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from egath.methods.base import (HeadConfig, Method, Range, Rebuildable, StatelessObjective, bert_adam, trunk,
                                warmup_cosine)
from egath.methods.dsph import TanhHash  # the same hash layer: Linear, dropout 0.2, tanh (model/hash_model.py)


@dataclass(frozen=True)
class DnphParams:
    margin: float = 1.0  # utils/utils.py DNPH_out `mrg`: added to the distance to a sample's own proxies
    uniform_weight: float = 0.1  # train/hash_train.py: loss1 - 0.1 * noise_loss
    warmup_proportion: float = 0.1  # utils/get_args.py --warmup-proportion


class DNPH(Rebuildable):
    """Per modality: trunk -> tanh hash layer (B, K), and trunk -> linear label scores (B, C); plus
    the label proxies (C, K), a buffer: the authors' code draws them N(0, 1) / 8 and never steps
    their optimiser, so they keep their initial directions."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.cfg = cfg
        self.image_trunk = trunk(cfg.image_dim, cfg)
        self.text_trunk = trunk(cfg.text_dim, cfg)
        self.image_hash = TanhHash(cfg.hidden_dim, cfg.bits)
        self.text_hash = TanhHash(cfg.hidden_dim, cfg.bits)
        self.image_classifier = nn.Linear(cfg.hidden_dim, cfg.n_labels)
        self.text_classifier = nn.Linear(cfg.hidden_dim, cfg.n_labels)
        self.register_buffer("proxies", torch.randn(cfg.n_labels, cfg.bits) / 8)  # utils/utils.py DNPH_out

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.image_hash(self.image_trunk(x))

    def encode_text(self, x: torch.Tensor) -> torch.Tensor:
        return self.text_hash(self.text_trunk(x))

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        f_image, f_text = self.image_trunk(image), self.text_trunk(text)
        return {"h_image": self.image_hash(f_image), "h_text": self.text_hash(f_text),
                "scores_image": self.image_classifier(f_image), "scores_text": self.text_classifier(f_text),
                "proxies": self.proxies}


# --------------------------------------------------------------------------- the loss

def proxy_term(h_image: torch.Tensor, h_text: torch.Tensor, labels: torch.Tensor, proxies: torch.Tensor,
               margin: float) -> torch.Tensor:
    """mean over the 2B codes of sum_{c: y_c = 1} -log softmax(-d)_c, d_c = ||h^ - p^_c||^2 + m y_c,
    h^ and p^ unit length (so ||h^ - p^_c||^2 = 2 - 2 cos)."""
    h = F.normalize(torch.cat([h_image, h_text]), dim=1)  # (2B, K)
    y = torch.cat([labels, labels]).to(h.dtype)  # (2B, C)
    distance = 2 - 2 * h @ F.normalize(proxies, dim=1).T + margin * y
    return -(y * F.log_softmax(-distance, dim=1)).sum(1).mean()


def classification_term(scores_image: torch.Tensor, scores_text: torch.Tensor, labels: torch.Tensor):
    """Cross-entropy of both modalities' label scores against argmax(y): a multi-label sample's first label."""
    target = labels.argmax(1)
    return F.cross_entropy(scores_image, target) + F.cross_entropy(scores_text, target)


def assign_targets(h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """targets reordered so that row i goes to h_i and sum_i ||h_i - target_i||_2 is least
    (train/hash_train.py, utils/b_reg.py `gene_noise`: scipy's linear_sum_assignment)."""
    cost = torch.cdist(h.detach().double(), targets.double()).cpu().numpy()
    _, columns = linear_sum_assignment(cost)
    return targets[torch.from_numpy(columns).to(targets.device)]


def uniform_term(h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """mean_i <h_i, target_i> (B, K) x (B, K) -> scalar; the loss subtracts it."""
    return (h * targets).sum(1).mean()


def dnph_loss(out: dict[str, torch.Tensor], labels: torch.Tensor, targets: torch.Tensor,
              margin: float = 1.0, uniform_weight: float = 0.1) -> dict[str, torch.Tensor]:
    """The terms and total of DNPH (module docstring) for one batch, given its random vertices
    `targets` (B, K) in {-1, +1}, before their assignment to the codes."""
    h_image, h_text = out["h_image"], out["h_text"]
    terms = {"proxy": proxy_term(h_image, h_text, labels, out["proxies"], margin),
             "classification": classification_term(out["scores_image"], out["scores_text"], labels),
             "uniform": uniform_term(h_image, assign_targets(h_image, targets))
             + uniform_term(h_text, assign_targets(h_text, targets))}
    terms["total"] = terms["proxy"] + terms["classification"] - uniform_weight * terms["uniform"]
    return terms


def random_vertices(n: int, bits: int) -> torch.Tensor:
    """n points of {-1, +1}^bits, each coordinate a fair coin (utils/b_reg.py `rand_unit_rect`);
    drawn on the CPU from torch's seeded generator, whose state the checkpoints carry."""
    return torch.randint(0, 2, (n, bits)).float() * 2 - 1


def batch_loss(out: dict[str, torch.Tensor], labels: torch.Tensor, params: DnphParams) -> dict[str, torch.Tensor]:
    """dnph_loss with the batch's random vertices (one draw, shared by both modalities, as theirs)."""
    targets = random_vertices(*out["h_image"].shape).to(out["h_image"].device)
    return dnph_loss(out, labels, targets, params.margin, params.uniform_weight)


def build(bits: int, cfg, params: DnphParams, data, graph):
    model = DNPH(HeadConfig.for_data(bits, cfg, data))
    return model, StatelessObjective(lambda out, labels: batch_loss(out, labels, params))


def optimizers(model: DNPH, cfg, params: DnphParams) -> list[torch.optim.Optimizer]:
    """train/hash_train.py: one BertAdam at lr 1e-3, weight decay 0.2 for the hash layers and the
    classifiers (the CLIP it fine-tunes at 1e-5 is frozen here; the trunk in its place learns at the
    heads' rate); the proxies are not trained (DNPH's docstring)."""
    return [bert_adam([{"params": [*model.image_trunk.parameters(), *model.image_hash.parameters()]},
                       {"params": [*model.text_trunk.parameters(), *model.text_hash.parameters()]},
                       {"params": [*model.image_classifier.parameters(), *model.text_classifier.parameters()]}],
                      cfg)]


METHOD = Method(
    name="dnph", kind="supervised", source="QinLab-WFU/OUR-DNPH",
    summary="tanh hash layer and a label classifier per modality; softmax loss to fixed random label "
            "proxies with a margin, cross-entropy, and a reward for codes matched one-to-one to random "
            "hypercube vertices (uniform distribution constraint)",
    build=build, from_checkpoint=DNPH.from_checkpoint, params=DnphParams, optimizers=optimizers,
    lr_scale=warmup_cosine,
    # utils/get_args.py: --lr 0.001, --weight-decay 0.2, --batch-size 64
    training_defaults={"lr": 1e-3, "weight_decay": 0.2, "batch_size": 64},
    tuning_space={"lr": Range(1e-4, 1e-2), "uniform_weight": Range(0.01, 1.0)})
