"""What every method provides, and the parts several methods share.

A method is a `Method`: how to build its model and objective for one run, how to rebuild the
model from model.pt, its own hyper-parameters (a dataclass whose defaults come from its
authors' code), and its optimiser and learning-rate schedule. The training loop in
egath.training is the same for all of them:

    model, objective = method.build(bits, cfg, params, data, graph)
    optimizers = method.optimizers(model, cfg, params)        # each group's base lr in group["lr"]
    for epoch:
        for phase in objective.phases:                        # most methods: one pass per epoch
            objective.begin_phase(phase)
            for batch:                                        # lr = base lr * method.lr_scale(...)
                out = model(image, text)                      # dict: h_image, h_text in (-1, 1), ...
                terms = objective.loss(out, labels, index)    # dict of named terms and "total"
                total.backward(); step every optimizer
        objective.end_epoch(h_image, h_text)                  # e.g. a discrete code update; may
                                                              # return scalars for the history

A model is an nn.Module with a `cfg` dataclass (saved as `model_config`), forward(image, text)
-> dict with `h_image` and `h_text` in (-1, 1), and encode_image / encode_text (continuous; the
sign is the code).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

from egath import settings
from egath.inputs import InputForm

TEXT_INPUTS = ("bow", "clip")  # the paper's bag-of-words, or the cached CLIP text features


@dataclass(frozen=True)
class NoParams:
    """For methods without hyper-parameters of their own."""


def adam(model: nn.Module, cfg, params) -> list[torch.optim.Optimizer]:
    """One Adam over every trainable parameter, lr and weight decay from TrainConfig (EGATH, GCDH)."""
    return [torch.optim.Adam(trainable(model), lr=cfg.lr, weight_decay=cfg.weight_decay)]


def exponential_decay(cfg, params, progress: float) -> float:
    """GCDH's schedule: lr * (lr_min / lr)^(e / epochs) during epoch e (0-based), steps within an epoch alike."""
    return (cfg.lr_min / cfg.lr) ** (math.floor(progress) / max(cfg.epochs, 1))


def constant_lr(cfg, params, progress: float) -> float:
    """No schedule: the authors' learning rates hold for every epoch (DJSRH, JDSH)."""
    return 1.0


def warmup_cosine(cfg, params, progress: float) -> float:
    """BERT's warmup_cosine schedule (DCHMT's and DSPH's BertAdam) over all the steps of
    training: x / w while the share of training done x = progress / epochs is below
    w = params.warmup_proportion, then 0.5 (1 + cos(pi x))."""
    done, warmup = progress / cfg.epochs, params.warmup_proportion
    return done / warmup if done < warmup else 0.5 * (1.0 + math.cos(math.pi * done))


def bert_adam(param_groups, cfg) -> torch.optim.AdamW:
    """The BertAdam of DCHMT and DSPH (model/optimization.py): Adam with weight decay added to
    the update, betas (0.9, 0.98), eps 1e-6. torch's AdamW applies the same decoupled decay;
    it bias-corrects the moments (BertAdam does not) and does not clip each tensor's gradient
    to norm 1 (BertAdam does): docs/methods.md."""
    return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6,
                             weight_decay=cfg.weight_decay)


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


@dataclass(frozen=True)
class Range:
    """One dimension of a method's tuning space: values from low to high, log-uniform by default."""
    low: float
    high: float
    log: bool = True
    integer: bool = False

    def value(self, u: float) -> float | int:
        """The value at u in [0, 1) of the range."""
        x = (self.low * (self.high / self.low) ** u) if self.log else self.low + u * (self.high - self.low)
        return int(round(x)) if self.integer else float(x)


@dataclass(frozen=True)
class Method:
    name: str  # the model name in config (`methods.<name>.model`)
    kind: str  # "supervised" or "unsupervised"
    summary: str  # one line: what it is and its loss (docs/methods.md, report)
    source: str  # its authors' code (repository)
    build: Callable[..., tuple[nn.Module, Any]]  # (bits, cfg, params, data, graph) -> (model, objective)
    from_checkpoint: Callable[[dict], nn.Module]  # model.pt contents -> model
    params: type = NoParams  # its own hyper-parameters; config `methods.<name>.params` overrides them
    optimizers: Callable[..., list[torch.optim.Optimizer]] = adam  # (model, cfg, params)
    lr_scale: Callable[..., float] = exponential_decay  # (cfg, params, progress in epochs) -> factor
    training_defaults: Mapping[str, Any] = field(default_factory=dict)  # TrainConfig values of its authors
    text_inputs: tuple[str, ...] = TEXT_INPUTS
    # the form of its inputs (egath.inputs): every method's authors fed raw activations (CNN fc7,
    # ResNet pooled features, CLIP's unnormalised embeddings), never unit-length features
    inputs: InputForm = InputForm(image="standardise", text="standardise")
    # what egath.tuning searches: TrainConfig fields or fields of `params`, each over a Range
    tuning_space: Mapping[str, Range] = field(default_factory=dict)

    def make_params(self, overrides: Mapping[str, Any] | None):
        return settings.from_dict(self.params, overrides, f"parameters of method model {self.name!r}")


# --------------------------------------------------------------------------- objectives


class Objective:
    """An objective that is a pure function of the batch: nothing to update or save per epoch.
    Subclasses override what they need."""

    phases: tuple = (None,)  # passes over the training set per epoch (DCMH: image, then text)

    def loss(self, out: dict, labels: torch.Tensor, index: torch.Tensor) -> dict:
        raise NotImplementedError

    def begin_phase(self, phase) -> None:
        pass

    def end_epoch(self, h_image: torch.Tensor, h_text: torch.Tensor) -> dict | None:
        """Per-epoch updates; may return scalars to log in the history (e.g. how much B moved)."""
        return None

    def protocol(self) -> dict:
        """Settings that belong in every reported number (e.g. EGATH's code update variant)."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class StatelessObjective(Objective):
    """loss(out, labels) from a plain function."""

    def __init__(self, loss_fn: Callable[[dict, torch.Tensor], dict]):
        self._loss_fn = loss_fn

    def loss(self, out: dict, labels: torch.Tensor, index: torch.Tensor) -> dict:
        return self._loss_fn(out, labels)


class ClosedForm(Objective):
    """For methods fitted when built (no trainable parameters, no epochs)."""

    def loss(self, out, labels, index):
        raise RuntimeError("this method is fitted in closed form and has no training loss")


# --------------------------------------------------------------------------- shared parts


def binarize(x: torch.Tensor) -> torch.Tensor:
    """sign with sign(0) = +1, so codes are always in {-1, +1}."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def label_similarity(labels_a: torch.Tensor, labels_b: torch.Tensor) -> torch.Tensor:
    """S_ij = 1 if samples i and j share a label, else 0: (B, M), in the labels' float dtype."""
    dtype = labels_a.dtype if labels_a.is_floating_point() else torch.float32
    return (labels_a.float() @ labels_b.float().T > 0).to(dtype)


@dataclass
class HeadConfig:
    """A trunk and a hash layer per modality, on frozen cached features."""
    image_dim: int  # CLIP image embedding size
    text_dim: int  # bag-of-words size or CLIP text embedding size
    n_labels: int
    bits: int
    hidden_dim: int = 512  # trunk width (TrainConfig.feature_dim)
    dropout: float = 0.1

    @classmethod
    def for_data(cls, bits: int, cfg, data, **fields) -> "HeadConfig":
        """The widths of `data` and the training settings `cfg`; `fields`: a subclass's own."""
        return cls(image_dim=data.image.shape[1], text_dim=data.text.shape[1],
                   n_labels=data.labels.shape[1], bits=bits, hidden_dim=cfg.feature_dim,
                   dropout=cfg.dropout, **fields)


def trunk(in_dim: int, cfg: HeadConfig) -> nn.Sequential:
    """Frozen feature (B, in_dim) -> (B, hidden_dim): stands in for a backbone the authors fine-tune."""
    return nn.Sequential(nn.Linear(in_dim, cfg.hidden_dim), nn.ReLU(), nn.Dropout(cfg.dropout))


class Rebuildable(nn.Module):
    """A model rebuilt from model.pt by its config dataclass and weights."""
    config_class: type = HeadConfig

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> "Rebuildable":
        model = cls(cls.config_class(**ckpt["model_config"]))
        model.load_state_dict(ckpt["state_dict"])
        return model


class HashNets(Rebuildable):
    """Two networks whose outputs are the continuous codes: `image_net` and `text_net`, each
    (B, in) -> h (B, K) in (-1, 1), built by the subclass."""

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.image_net(x)

    def encode_text(self, x: torch.Tensor) -> torch.Tensor:
        return self.text_net(x)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"h_image": self.image_net(image), "h_text": self.text_net(text)}
