"""Every method the workflow trains, by model name: EGATH, its two ablations and the baselines
(egath.baselines: DCHMT, DSPH, PCA-ITQ).

A method is a model (an nn.Module whose forward(image, text) returns at least `h_image` and
`h_text` in (-1, 1), with encode_image / encode_text for retrieval) and an objective (the
loss of a batch, and what happens at the end of an epoch). The training loop in
egath.training is the same for all of them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from egath.baselines import BASELINES, CLIP_TEXT_ONLY
from egath.losses import EgathObjective
from egath.model import ModelConfig, build_model, egath_from_checkpoint

EGATH_VARIANTS = {  # model name -> switches; the paper's ablations (Table 3)
    "egath": {"use_gat": True, "use_triplet": True},
    "egath-g": {"use_gat": False, "use_triplet": True},  # no GAT classifier
    "egath-t": {"use_gat": True, "use_triplet": False},  # no cosine triplet loss
}
MODELS = tuple(EGATH_VARIANTS) + tuple(BASELINES)
TEXT_INPUTS = ("bow", "clip")


@dataclass(frozen=True)
class MethodSpec:
    model: str = "egath"  # one of MODELS
    text: str = "bow"  # bow: the paper's bag-of-words; clip: cached CLIP text features

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"unknown method model {self.model!r}; known: {list(MODELS)}")
        if self.text not in TEXT_INPUTS:
            raise ValueError(f"unknown text input {self.text!r}; known: {list(TEXT_INPUTS)}")
        if self.model in CLIP_TEXT_ONLY and self.text != "clip":
            raise ValueError(f"method model {self.model!r} needs text: clip (it projects image and "
                             f"text into CLIP's shared space), got text: {self.text!r}")

    @classmethod
    def parse(cls, method: str, spec: dict | None) -> "MethodSpec":
        """The spec from config; where it names no model, the method's name is the model."""
        return cls(**{"model": method, **(spec or {})})


def build_method(spec: MethodSpec, bits: int, cfg, data, graph):
    """(model, objective) for one training run. `cfg` is an egath.training.TrainConfig."""
    if spec.model in BASELINES:
        return BASELINES[spec.model].build(bits, cfg, data)
    switches = EGATH_VARIANTS[spec.model]
    model_cfg = ModelConfig(
        image_dim=data.image.shape[1], text_dim=data.text.shape[1], n_labels=data.labels.shape[1],
        node_dim=graph.node_features.shape[1], bits=bits, d_model=cfg.d_model, ff_dim=cfg.ff_dim,
        feature_dim=cfg.feature_dim, gat_hidden=cfg.gat_hidden, dropout=cfg.dropout,
        use_gat=switches["use_gat"])
    model = build_model(model_cfg, graph.adjacency, graph.node_features)
    objective = EgathObjective(cfg, data.labels, bits, use_triplet=switches["use_triplet"])
    return model, objective


def model_from_checkpoint(ckpt: dict) -> torch.nn.Module:
    """Rebuild any trained model from its model.pt alone."""
    spec = MethodSpec(**ckpt["method_spec"])
    if spec.model in EGATH_VARIANTS:
        return egath_from_checkpoint(ckpt)
    if spec.model in BASELINES:
        return BASELINES[spec.model].from_checkpoint(ckpt)
    raise ValueError(f"no loader for model {spec.model!r}")
