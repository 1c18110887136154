"""DNpH (Qin et al., IEEE TMM 2024; authors' code QinLab-WFU/DNpH): a tanh hash layer per modality
trained with the square-clamped quadratic spherical mutual information (QSMI) loss between the
batch's codes and its label neighbourhoods, within and across the modalities.

The authors' hash layers read CLIP's pooled, projected embeddings (not its token sequences), the
features this project caches; a trunk (egath.methods.base.trunk) stands in for the CLIP they
fine-tune. Differences from the authors' code: docs/methods.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from egath.methods.base import (HeadConfig, Method, Range, StatelessObjective, bert_adam, label_similarity,
                                warmup_cosine)
from egath.methods.dsph import TanhHashNets  # DNpH's LinearHash is DSPH's: Linear, dropout 0.2, tanh

QSMI_EPS = 1e-8  # utils/qmi_loss.py: added to each code's norm before the cosines


@dataclass(frozen=True)
class DnphTmmParams:
    # weight on QSMI's between-neighbourhood term relative to the authors' 1 / M (the share of
    # neighbour pairs in the batch); the authors have no loss weight: 1 is their loss
    between_weight: float = 1.0
    warmup_proportion: float = 0.1  # utils/get_args.py --warmup-proportion


class DNpH(TanhHashNets):
    """Per modality: trunk -> tanh hash layer (h in (-1, 1)^K). PyTorch's default Linear init:
    model/hash_model.py leaves its kaiming init commented out."""


    @classmethod
    def build(cls, bits: int, cfg, params: DnphTmmParams, data):
        model = cls(HeadConfig.for_data(bits, cfg, data))
        return model, StatelessObjective(lambda out, labels: qsmi_loss(out, labels, params.between_weight))


def spherical_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Y_ij = (1 + cos(a_i, b_j)) / 2 in [0, 1], each row divided by (its norm + QSMI_EPS): (B, M)."""
    unit_a = a / (a.norm(dim=1, keepdim=True) + QSMI_EPS)
    unit_b = b / (b.norm(dim=1, keepdim=True) + QSMI_EPS)
    return 0.5 * (1 + unit_a @ unit_b.T)


def qsmi_loss(out: dict[str, torch.Tensor], labels: torch.Tensor,
              between_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """DNpH's square-clamped QSMI over the image-image, text-text and image-text similarities Y
    (spherical_similarity), summed over all B x B pairs of the batch, the diagonal included:
        within  = sum_ij (D_ij Y_ij - 1)^2
        between = between_weight * (1 / M) sum_ij Y_ij^2,   1 / M = sum_ij D_ij / B^2
    D_ij = 1 where samples i and j share a label. A neighbour pair is pulled to Y = 1; a
    non-neighbour pair adds a constant 1 to `within` (as in the authors' value) and is pushed
    towards Y = 0 only by `between`, which weighs every pair by the batch's share of neighbours."""
    h_i, h_t = out["h_image"], out["h_text"]
    d = label_similarity(labels, labels).to(h_i.dtype)  # (B, B), in the codes' dtype
    neighbour_share = d.mean()  # 1 / M of the authors' loss, from the batch's labels
    similarities = [spherical_similarity(a, b) for a, b in ((h_i, h_i), (h_t, h_t), (h_i, h_t))]
    terms = {"within": sum((d * y - 1).pow(2).sum() for y in similarities),
             "between": between_weight * neighbour_share * sum(y.pow(2).sum() for y in similarities)}
    terms["total"] = terms["within"] + terms["between"]
    return terms


def optimizers(model: DNpH, cfg, params: DnphTmmParams) -> list[torch.optim.Optimizer]:
    """train/hash_train.py: one BertAdam, lr 1e-3 for the two hash layers (and the CLIP it
    fine-tunes at 1e-5: the trunk standing in for it learns at the hash layers' rate), weight decay 0.2."""
    return [bert_adam([{"params": model.image_net.parameters()}, {"params": model.text_net.parameters()}], cfg)]


METHOD = Method(
    name="dnph-tmm", kind="supervised", source="QinLab-WFU/DNpH",
    summary="tanh hash layer per modality; square-clamped quadratic spherical mutual information "
            "between the codes' cosines and the label neighbourhoods over I-I, T-T, I-T",
    build=lambda bits, cfg, params, data, graph: DNpH.build(bits, cfg, params, data),
    from_checkpoint=DNpH.from_checkpoint, params=DnphTmmParams, optimizers=optimizers, lr_scale=warmup_cosine,
    # utils/get_args.py: --lr 0.001, --weight-decay 0.2, --batch-size 64 (README.md's command: 128)
    training_defaults={"lr": 1e-3, "weight_decay": 0.2, "batch_size": 64},
    tuning_space={"lr": Range(1e-4, 1e-2), "between_weight": Range(0.25, 4.0)})
