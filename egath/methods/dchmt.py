"""DCHMT (Tu et al., ACM MM 2022; authors' code kalenforn/DCHMT): a selecting hash layer that
picks each bit with a 2-way softmax, trained with a Euclidean pair loss on the selection vectors.

Here on frozen cached CLIP features: a trunk (egath.methods.base.trunk) stands in for the CLIP
the authors fine-tune. Differences from the authors' code: docs/methods.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from egath.methods.base import (HeadConfig, Method, Range, Rebuildable, StatelessObjective, bert_adam,
                                label_similarity, trunk, warmup_cosine)

DCHMT_VARTHETA = 0.5  # rate of error code: negatives are pushed to ~vartheta*K differing bits (DCHMT repo default)
DCHMT_QUANTIZATION_WEIGHT = 1e-3  # quan_alpha of the author's later toolkit; the paper's select layer has none


@dataclass(frozen=True)
class DchmtParams:
    vartheta: float = DCHMT_VARTHETA
    quantization_weight: float = DCHMT_QUANTIZATION_WEIGHT
    warmup_proportion: float = 0.1  # utils/get_args.py --warmup-proportion


def kaiming_fan_out_(linear: nn.Linear, fan_out: int) -> None:
    """DCHMT's weights_init_kaiming (model/hash_model.py): kaiming_uniform with mode fan_out,
    zero bias, for a layer whose fan-out is `fan_out` (2 for each per-bit layer)."""
    bound = math.sqrt(6.0 / fan_out)  # gain sqrt(2) (ReLU) * sqrt(3 / fan_out)
    nn.init.uniform_(linear.weight, -bound, bound)
    nn.init.zeros_(linear.bias)


class SelectHash(nn.Module):
    """DCHMT's selecting mechanism: each bit k chooses between -1 and +1 with a 2-way softmax,
    p_k = softmax(W_k f + b_k) (B, K, 2); the bit is the argmax, i.e. sign(p_k,+ - p_k,-)."""

    def __init__(self, in_dim: int, bits: int):
        super().__init__()
        self.fc = nn.Linear(in_dim, 2 * bits)  # the K per-bit (in_dim -> 2) layers, stacked
        # initialised as K separate 2-way layers (fan-out 2 each), not as one layer of fan-out 2K,
        # whose weights would be sqrt(K) times smaller
        kaiming_fan_out_(self.fc, fan_out=2)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.fc(f).unflatten(1, (-1, 2)), dim=-1)  # (B, K, 2)


def select_to_code(p: torch.Tensor) -> torch.Tensor:
    """(B, K, 2) -> h = p_+ - p_- (B, K) in (-1, 1), whose sign is the selected bit."""
    return p[..., 1] - p[..., 0]


class DCHMT(Rebuildable):
    """Per modality: trunk -> selecting hash layer. Outputs the selection probabilities too."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.cfg = cfg
        self.image_net = nn.Sequential(trunk(cfg.image_dim, cfg), SelectHash(cfg.hidden_dim, cfg.bits))
        self.text_net = nn.Sequential(trunk(cfg.text_dim, cfg), SelectHash(cfg.hidden_dim, cfg.bits))
        for net in (self.image_net, self.text_net):  # the trunk plays DCHMT's fc (its LINEAR_EMBED layer)
            kaiming_fan_out_(net[0][0], fan_out=cfg.hidden_dim)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return select_to_code(self.image_net(x))

    def encode_text(self, x: torch.Tensor) -> torch.Tensor:
        return select_to_code(self.text_net(x))

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        p_image, p_text = self.image_net(image), self.text_net(text)
        return {"h_image": select_to_code(p_image), "h_text": select_to_code(p_text),
                "p_image": p_image, "p_text": p_text}

    @classmethod
    def build(cls, bits: int, cfg, params: DchmtParams, data):
        def loss(out, labels):
            return dchmt_loss(out, labels, params.vartheta, params.quantization_weight)
        return cls(HeadConfig.for_data(bits, cfg, data)), StatelessObjective(loss)


def dchmt_pair_loss(a: torch.Tensor, b: torch.Tensor, s: torch.Tensor, margin: float):
    """DCHMT's Euclidean similarity loss between code vectors a (B, D) and b (M, D):
    positive = mean_ij S_ij d_ij^2,  negative = mean_ij (1 - S_ij) max(0, m - d_ij)^2,
    d_ij = ||a_i - b_j||_2, means over all B*M pairs (the paper's l2 variant)."""
    d2 = (a.unsqueeze(1) - b.unsqueeze(0)).pow(2).sum(-1)  # (B, M)
    d = d2.clamp_min(1e-12).sqrt()  # finite gradient for identical negatives
    positive = (s * d2).mean()
    negative = ((1 - s) * F.relu(margin - d).pow(2)).mean()
    return positive, negative


def dchmt_loss(out: dict[str, torch.Tensor], labels: torch.Tensor,
               vartheta: float = DCHMT_VARTHETA,
               quantization_weight: float = DCHMT_QUANTIZATION_WEIGHT) -> dict[str, torch.Tensor]:
    """DCHMT (Tu et al., ACM MM 2022), on the selection vectors v = [p_1; ...; p_K] (B, 2K):
    L = sum over (I,T), (I,I), (T,T) of positive + negative (dchmt_pair_loss), with
    m = sqrt(2 K vartheta): one differing bit adds 2 to ||v_i - v_j||^2, so m^2 is vartheta*K bits;
    + quantization_weight * (1 - mean(h^2)) averaged over the modalities, h = p_+ - p_-
    (the toolkit's 1 - mean((2p - 1)^2), pushing each softmax to a one-hot choice)."""
    s = label_similarity(labels, labels)
    v_i, v_t = out["p_image"].flatten(1), out["p_text"].flatten(1)  # (B, 2K)
    margin = math.sqrt(2 * out["p_image"].shape[1] * vartheta)
    pairs = [dchmt_pair_loss(a, b, s, margin) for a, b in ((v_i, v_t), (v_i, v_i), (v_t, v_t))]
    terms = {"positive": sum(p for p, _ in pairs), "negative": sum(n for _, n in pairs),
             "quantization": 0.5 * ((1 - out["h_image"].pow(2).mean()) + (1 - out["h_text"].pow(2).mean()))}
    terms["total"] = terms["positive"] + terms["negative"] + quantization_weight * terms["quantization"]
    return terms


def optimizers(model: DCHMT, cfg, params: DchmtParams) -> list[torch.optim.Optimizer]:
    """train/hash_train.py: BertAdam, lr 1e-3 for the hash layers (the CLIP it fine-tunes at 1e-5
    is frozen here; the trunk in its place learns at the hash layers' rate), weight decay 0.2."""
    return [bert_adam([{"params": model.image_net.parameters()}, {"params": model.text_net.parameters()}], cfg)]


METHOD = Method(
    name="dchmt", kind="supervised", source="kalenforn/DCHMT",
    summary="selecting hash layer (2-way softmax per bit); Euclidean pair loss on the selection "
            "vectors over I-T, I-I, T-T with margin sqrt(2 K vartheta)",
    build=lambda bits, cfg, params, data, graph: DCHMT.build(bits, cfg, params, data),
    from_checkpoint=DCHMT.from_checkpoint, params=DchmtParams, optimizers=optimizers, lr_scale=warmup_cosine,
    # utils/get_args.py: --lr 0.001, --weight-decay 0.2, --batch-size 64
    training_defaults={"lr": 1e-3, "weight_decay": 0.2, "batch_size": 64},
    tuning_space={"lr": Range(1e-4, 1e-2), "quantization_weight": Range(1e-4, 1e-1)})
