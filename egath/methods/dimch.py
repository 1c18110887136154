"""DIMCH (Tu et al., IEEE TIP 2025, "Cross-modal Hashing via Diverse Instances Matching"; the
authors' code is models/DIMCH and runners/DIMCH in their toolkit kalenforn/clip-based-cross-modal-hash):
each sample is a set of M instance embeddings, sets are matched across modalities by a smooth
Chamfer similarity, and the code is tanh of the mean of the set.

Model, per modality: feature (B, d) -> trunk (B, F) -> a 1-D convolution with M output channels
over the feature axis, ReLU (B, M, F) -> Linear(F, F/2), ReLU, Dropout, Linear(F/2, K): the
instances e (B, M, K); the code h = tanh(mean over the M instances) (B, K).

Loss, over a batch with labels l (B, C), ê the unit-length instances:
    token_weight        * NDCG-weighted triplet on 1 - smooth Chamfer(ê_I, ê_T), I->T and T->I averaged
  + mmd_weight          * MMD between all image and all text instances, kernel exp(-gamma ||x - y||)
  + diversity_weight    * (div(ê_I) + div(ê_T))
  + hash_weight         * NDCG-weighted triplet on 1 - cos(h_I, h_T), I->T and T->I averaged
  + quantization_weight * mean (h - sign h)^2, image and text averaged

The authors read CLIP's token sequences (50 image, 32 text tokens) and fine-tune CLIP; here each
modality's cached pooled embedding is a sequence of one token, and a trunk
(egath.methods.base.trunk) stands in for CLIP. Differences from the authors' code: docs/methods.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from egath.methods.base import (HeadConfig, Method, Range, Rebuildable, StatelessObjective, bert_adam, trunk,
                                warmup_cosine)
from egath.methods.dchmt import kaiming_fan_out_
from egath.methods.egath import ndcg_weights

# batchwise_uniformity_loss's default t in models/DIMCH/DIMCH.py (the config does not set it)
DIVERSITY_SHARPNESS = 20.0


@dataclass(frozen=True)
class DimchParams:
    # configs/DIMCH/config.yaml unless marked
    set_size: int = 8  # model.setDim: instances per sample (M)
    hash_dropout: float = 0.3  # model.dropout: in the instance MLP
    temperature: float = 16.0  # model.distance.temperature of the smooth Chamfer similarity
    token_margin: float = 0.3  # model.chamfer.token_triplet_margin
    hash_margin: float = 0.3  # model.hash_pars.triplet_margin
    token_weight: float = 50.0  # model.hash_pars.triplet_alpha
    hash_weight: float = 50.0  # model.hash_pars.hash_triplet_alpha
    mmd_weight: float = 1.0  # model.chamfer.mmd_alpha
    mmd_gamma: float = 0.5  # model.chamfer.mmd_gamma
    diversity_weight: float = 0.3  # model.chamfer.unif_alpha
    quantization_weight: float = 1.0  # model.hash_pars.quan_alpha
    warmup_proportion: float = 0.1  # optimizer.warmup_proportion

    def __post_init__(self):
        if self.set_size < 1:
            raise ValueError(f"methods.dimch.params.set_size must be at least 1, got {self.set_size}")
        if self.temperature <= 0:
            raise ValueError(f"methods.dimch.params.temperature must be positive, got {self.temperature}")


@dataclass
class DimchConfig(HeadConfig):
    set_size: int = 8
    hash_dropout: float = 0.3


class InstanceHash(nn.Module):
    """DIMCH's TokenHash on a sequence of one token: (B, F) -> instances (B, M, K), code (B, K)."""

    def __init__(self, in_dim: int, bits: int, set_size: int, dropout: float):
        super().__init__()
        if in_dim < 2:
            raise ValueError(f"training.feature_dim must be at least 2 for dimch's F/2-wide layer, got {in_dim}")
        # theirs: Conv1d(tokens, M, 3, padding 1) over the feature axis; one token here
        self.instances = nn.Conv1d(1, set_size, kernel_size=3, padding=1)
        self.project = nn.Sequential(nn.Linear(in_dim, in_dim // 2), nn.ReLU(), nn.Dropout(dropout),
                                     nn.Linear(in_dim // 2, bits))
        # models/common/hash.py weights_init_kaiming: convolutions kaiming_normal (fan_in), linear
        # layers kaiming_uniform (fan_out), biases zero
        nn.init.kaiming_normal_(self.instances.weight, mode="fan_in")
        nn.init.zeros_(self.instances.bias)
        for layer in (self.project[0], self.project[3]):
            kaiming_fan_out_(layer, fan_out=layer.out_features)

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        instances = self.project(F.relu(self.instances(f.unsqueeze(1))))  # (B, M, K)
        return instances, torch.tanh(instances.mean(1))


class DIMCH(Rebuildable):
    """Per modality: trunk -> instance hash. Outputs the instances too, for the loss."""
    config_class = DimchConfig

    def __init__(self, cfg: DimchConfig):
        super().__init__()
        self.cfg = cfg
        self.image_trunk, self.text_trunk = trunk(cfg.image_dim, cfg), trunk(cfg.text_dim, cfg)
        self.image_hash, self.text_hash = (InstanceHash(cfg.hidden_dim, cfg.bits, cfg.set_size, cfg.hash_dropout)
                                           for _ in range(2))

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.image_hash(self.image_trunk(x))[1]

    def encode_text(self, x: torch.Tensor) -> torch.Tensor:
        return self.text_hash(self.text_trunk(x))[1]

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        e_image, h_image = self.image_hash(self.image_trunk(image))
        e_text, h_text = self.text_hash(self.text_trunk(text))
        return {"h_image": h_image, "h_text": h_text, "e_image": e_image, "e_text": e_text}

    @classmethod
    def build(cls, bits: int, cfg, params: DimchParams, data):
        config = DimchConfig.for_data(bits, cfg, data, set_size=params.set_size, hash_dropout=params.hash_dropout)
        return cls(config), StatelessObjective(lambda out, labels: dimch_loss(out, labels, params))


# --------------------------------------------------------------------------- the loss


def smooth_chamfer_similarity(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Sets of unit vectors a (B, M, K), b (B', M, K) -> (B, B'): with c_ij = cos(a_i, b_j),
    ( sum_i LSE_j(t c_ij) + sum_j LSE_i(t c_ij) ) / (2 M t), LSE = log sum exp: each instance's
    softened best match in the other set, averaged over both sets (models/DIMCH/distance/distance.py,
    smooth_chamfer with temperature_txt_scale 1 and denominator 2). Symmetric: s(b, a) = s(a, b)^T."""
    c = temperature * torch.einsum("aik,bjk->aibj", a, b)  # (B, M, B', M)
    from_a = torch.logsumexp(c, dim=3).sum(1)  # (B, B'): every instance of a to its match in b
    from_b = torch.logsumexp(c, dim=1).sum(2)  # (B, B')
    return (from_a + from_b) / (2 * a.shape[1] * temperature)


def dimch_triplet(distance: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """models/DIMCH/loss/triplet_loss.py: over (a, p, n), p sharing a label with anchor a and n none,
    w_ap max(0, d_ap - d_an + margin), w the NDCG weights of the shared-label counts; summed and
    divided by the number of triplets whose term is positive. distance (B, B): anchors are rows."""
    similarity = labels @ labels.T  # (B, B) shared-label counts
    weight = ndcg_weights(similarity)  # 0 where the pair shares no label
    irrelevant = (similarity == 0).to(distance.dtype)
    terms = (weight.unsqueeze(2) * irrelevant.unsqueeze(1)
             * F.relu(distance.unsqueeze(2) - distance.unsqueeze(1) + margin))  # (B, B, B): [a, p, n]
    return terms.sum() / ((terms > 1e-16).sum() + 1e-16)


def _squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(P, K), (Q, K) -> (P, Q) squared Euclidean distances, from inner products. The clamp at 0
    also passes no gradient where a distance is 0, so that its square root (no derivative at 0)
    stays finite in backward."""
    return (x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1) - 2 * x @ y.T).clamp_min(0)


def mmd(x: torch.Tensor, y: torch.Tensor, gamma: float) -> torch.Tensor:
    """Maximum mean discrepancy of the rows of x (P, K) and y (Q, K) under k(u, v) = exp(-gamma ||u - v||)
    (DIMCH's mmd_rbf_loss: the distance, not its square): mean k(x, x) - 2 mean k(x, y) + mean k(y, y)."""
    def kernel_mean(u, v, same: bool):
        d2 = _squared_distances(u, v)
        if same:  # a row's distance to itself: exactly 0, whatever the rounding of the inner products
            d2 = d2.masked_fill(torch.eye(len(u), dtype=torch.bool, device=u.device), 0)
        return torch.exp(-gamma * d2.sqrt()).mean()
    return kernel_mean(x, x, True) - 2 * kernel_mean(x, y, False) + kernel_mean(y, y, True)


def diversity(instances: torch.Tensor, set_size: int) -> torch.Tensor:
    """DIMCH's batchwise_uniformity_loss as its caller runs it, on the batch's instances flattened
    to (P, K): sum over pairs p < q of exp(-20 ||x_p - x_q||^2), divided by M (M - 1) / 2. Every
    pair of the batch counts, not only pairs within one sample's set; 0 for sets of one."""
    if set_size == 1:
        return instances.new_zeros(())
    similar = torch.exp(-DIVERSITY_SHARPNESS * _squared_distances(instances, instances))
    return torch.triu(similar, diagonal=1).sum() / (set_size * (set_size - 1) / 2)


def dimch_loss(out: dict[str, torch.Tensor], labels: torch.Tensor, params: DimchParams) -> dict[str, torch.Tensor]:
    """The named terms of DIMCH's loss (module docstring) and their weighted "total"."""
    e_image, e_text = F.normalize(out["e_image"], dim=-1), F.normalize(out["e_text"], dim=-1)  # (B, M, K)
    h_image, h_text = out["h_image"], out["h_text"]
    labels = labels.to(h_image.dtype)
    set_distance = (1 - smooth_chamfer_similarity(e_image, e_text, params.temperature)).clamp_min(0)  # (B, B)
    code_distance = (1 - F.normalize(h_image, dim=1) @ F.normalize(h_text, dim=1).T).clamp_min(0)  # (B, B)
    flat_image, flat_text = e_image.flatten(0, 1), e_text.flatten(0, 1)  # (B M, K)
    terms = {
        "instance_triplet": 0.5 * (dimch_triplet(set_distance, labels, params.token_margin)
                                   + dimch_triplet(set_distance.T, labels, params.token_margin)),
        "mmd": mmd(flat_image, flat_text, params.mmd_gamma),
        "diversity": diversity(flat_image, params.set_size) + diversity(flat_text, params.set_size),
        "hash_triplet": 0.5 * (dimch_triplet(code_distance, labels, params.hash_margin)
                               + dimch_triplet(code_distance.T, labels, params.hash_margin)),
        "quantization": 0.5 * sum((h - torch.sign(h.detach())).pow(2).mean() for h in (h_image, h_text)),
    }
    terms["total"] = (params.token_weight * terms["instance_triplet"] + params.mmd_weight * terms["mmd"]
                      + params.diversity_weight * terms["diversity"] + params.hash_weight * terms["hash_triplet"]
                      + params.quantization_weight * terms["quantization"])
    return terms


def optimizers(model: DIMCH, cfg, params: DimchParams) -> list[torch.optim.Optimizer]:
    """runners/base.py build_optimizer: BertAdam over two groups, the CLIP backbone (at 1e-5) and the
    hash layers (at 1e-3), weight decay 0.2. The trunks stand in for the backbone, at the hash rate."""
    return [bert_adam([{"params": [*model.image_trunk.parameters(), *model.text_trunk.parameters()]},
                       {"params": [*model.image_hash.parameters(), *model.text_hash.parameters()]}], cfg)]


METHOD = Method(
    name="dimch", kind="supervised", source="kalenforn/clip-based-cross-modal-hash (models/DIMCH, runners/DIMCH)",
    summary="M instance embeddings per sample, code tanh(mean); NDCG-weighted triplets on the smooth Chamfer "
            "similarity of the sets and on the codes' cosines, + MMD, instance diversity and quantization",
    build=lambda bits, cfg, params, data, graph: DIMCH.build(bits, cfg, params, data),
    from_checkpoint=DIMCH.from_checkpoint, params=DimchParams, optimizers=optimizers, lr_scale=warmup_cosine,
    # configs/DIMCH/config.yaml: optimizer.lr 0.001, optimizer.weight_decay 0.2, run.batch_size 20
    training_defaults={"lr": 1e-3, "weight_decay": 0.2, "batch_size": 20},
    tuning_space={"lr": Range(1e-4, 1e-2), "token_weight": Range(5.0, 500.0), "hash_weight": Range(5.0, 500.0)})
