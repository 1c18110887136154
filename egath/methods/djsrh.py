"""DJSRH (Su, Zhong & Zhang, ICCV 2019; authors' code zs-zhong/DJSRH): unsupervised. Each batch's
frozen image and text features give a joint-semantics affinity matrix S; the hash codes' cosine
similarities (image-image, image-text, text-text) reconstruct S in mean squared error.

Here on the cached CLIP image features and the run's text input (bag-of-words or CLIP text):
the authors fine-tune AlexNet up to fc7 in the image network, so a trunk (Dropout, Linear, ReLU,
as AlexNet's fc7 with its dropout; width TrainConfig.feature_dim) stands in for those layers in front of
their hash layer; the frozen pretrained AlexNet whose fc7 features build S_I is the cached CLIP
feature itself. JDSH (egath.methods.jdsh) builds on this module's networks, affinity helpers,
optimiser and schedule. Differences from the authors' code: docs/methods.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from egath.methods.base import Method, Objective, Range, Rebuildable, constant_lr


@dataclass(frozen=True)
class DjsrhParams:
    # settings.py of zs-zhong/DJSRH, MIRFlickr block where the datasets differ (NUS-WIDE: beta 0.6)
    beta: float = 0.9  # BETA: weight of the image affinity, S~ = beta S_I + (1 - beta) S_T
    eta: float = 0.4  # ETA: weight of the second-order affinity S~ S~^T / n
    mu: float = 1.5  # MU: scale of the target S
    lambda1: float = 0.1  # LAMBDA1: weight of the image-image reconstruction
    lambda2: float = 0.1  # LAMBDA2: weight of the text-text reconstruction
    text_lr_ratio: float = 10.0  # LR_TXT / LR_IMG = 0.01 / 0.001: the text net's lr is lr * this
    momentum: float = 0.9  # MOMENTUM of both SGD optimisers


# --------------------------------------------------------------------------- networks


@dataclass
class ReconstructionNetConfig:
    image_dim: int  # CLIP image embedding size
    text_dim: int  # bag-of-words or CLIP text embedding size
    bits: int
    hidden_dim: int = 4096  # text MLP width and image trunk width (AlexNet fc7, TxtNet fc1: 4096)
    dropout: float = 0.5  # in the image trunk (AlexNet's classifier drops 0.5)
    image_trunk: bool = True  # DJSRH fine-tunes the image backbone; JDSH keeps it frozen (no trunk)


class DJSRH(Rebuildable):
    """Image: [trunk ->] linear hash layer; text: Linear(V, hidden) -> ReLU -> Linear(hidden, K)
    (models.py). Both end in tanh(sharpness * x); the objective sets sharpness = sqrt(epoch + 1)
    at each epoch (models.py set_alpha). The sign, the code, does not depend on it."""

    config_class = ReconstructionNetConfig

    def __init__(self, cfg: ReconstructionNetConfig):
        super().__init__()
        self.cfg = cfg
        self.sharpness = 1.0
        if cfg.image_trunk:
            # as AlexNet's classifier up to fc7 (dropout on each layer's input, none after fc7's
            # ReLU), then the hash layer
            self.image_net = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.image_dim, cfg.hidden_dim),
                                           nn.ReLU(), nn.Linear(cfg.hidden_dim, cfg.bits))
        else:
            self.image_net = nn.Linear(cfg.image_dim, cfg.bits)
        self.text_net = nn.Sequential(nn.Linear(cfg.text_dim, cfg.hidden_dim), nn.ReLU(),
                                      nn.Linear(cfg.hidden_dim, cfg.bits))

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.sharpness * self.image_net(x))  # (B, K)

    def encode_text(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.sharpness * self.text_net(x))  # (B, K)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"h_image": self.encode_image(image), "h_text": self.encode_text(text)}

    @classmethod
    def for_data(cls, bits: int, cfg, data, image_trunk: bool):
        return cls(ReconstructionNetConfig(
            image_dim=data.image.shape[1], text_dim=data.text.shape[1], bits=bits,
            hidden_dim=cfg.feature_dim, dropout=cfg.dropout, image_trunk=image_trunk))


# --------------------------------------------------------------------------- affinities and losses


def cosine_affinity(x: torch.Tensor, signed: bool = False) -> torch.Tensor:
    """The features' cosine affinity on [-1, 1] (B, B): 2 cos(x_i, x_j) - 1, the authors' map of the
    cosines of non-negative features (fc7 after ReLU, bag-of-words: cosines in [0, 1]); for
    `signed` features (centred or standardised, whose cosines already span [-1, 1]) the cosine
    itself, so that the target keeps the range the authors' weights were set for."""
    x = F.normalize(x, dim=1)
    cos = x @ x.T
    return cos if signed else 2 * cos - 1


def takes_both_signs(x: torch.Tensor) -> bool:
    """Whether features have negative entries: their cosines span [-1, 1], not [0, 1]."""
    return bool((x < 0).any())


def code_cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """cos(a_i, b_j) (B, M) of continuous codes."""
    return F.normalize(a, dim=1) @ F.normalize(b, dim=1).T


def joint_semantics_affinity(image: torch.Tensor, text: torch.Tensor, beta: float, eta: float,
                             mu: float, signed: tuple[bool, bool] = (False, False)) -> torch.Tensor:
    """DJSRH's target (B, B) from a batch of n frozen features:
    S~ = beta S_I + (1 - beta) S_T,  S = mu ((1 - eta) S~ + eta S~ S~^T / n),
    S_I, S_T the cosine affinities (cosine_affinity) of the image and text features, each
    `signed` or not."""
    s = beta * cosine_affinity(image, signed[0]) + (1 - beta) * cosine_affinity(text, signed[1])
    n = s.shape[0]
    return mu * ((1 - eta) * s + eta * s @ s.T / n)


def djsrh_loss(h_image: torch.Tensor, h_text: torch.Tensor, s: torch.Tensor, lambda1: float,
               lambda2: float) -> dict[str, torch.Tensor]:
    """lambda1 mse(C_II, S) + mse(C_IT, S) + lambda2 mse(C_TT, S), C_ab = code_cosines(h_a, h_b),
    mse the mean over the B x B entries."""
    h = {"image": h_image, "text": h_text}
    terms = {f"{a}_{b}": F.mse_loss(code_cosines(h[a], h[b]), s)
             for a, b in (("image", "image"), ("image", "text"), ("text", "text"))}
    terms["total"] = lambda1 * terms["image_image"] + terms["image_text"] + lambda2 * terms["text_text"]
    return terms


class AffinityReconstruction(Objective):
    """DJSRH's and JDSH's training: a target S from the batch's frozen features (never the labels),
    reconstructed by the codes; the networks' tanh sharpness is sqrt(epoch + 1) during epoch
    `epoch` (0-based), so the epoch count is state that a resumed run restores."""

    def __init__(self, model: DJSRH, features: tuple[torch.Tensor, torch.Tensor], params):
        self.model, self.params = model, params
        self.image, self.text = features  # (N, d_image), (N, d_text): the whole training set
        self.signed = (takes_both_signs(self.image), takes_both_signs(self.text))  # cosine_affinity's map
        self.epoch = 0

    def target(self, index: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def reconstruction(self, h_image: torch.Tensor, h_text: torch.Tensor, s: torch.Tensor) -> dict:
        raise NotImplementedError

    def loss(self, out: dict, labels: torch.Tensor, index: torch.Tensor) -> dict:
        with torch.no_grad():  # S comes from frozen features: a constant target
            s = self.target(index)
        return self.reconstruction(out["h_image"], out["h_text"], s)

    def begin_phase(self, phase) -> None:
        self.model.sharpness = math.sqrt(self.epoch + 1)

    def end_epoch(self, h_image: torch.Tensor, h_text: torch.Tensor) -> None:
        self.epoch += 1

    def state_dict(self) -> dict:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]


class DjsrhObjective(AffinityReconstruction):
    def target(self, index):
        p = self.params
        return joint_semantics_affinity(self.image[index], self.text[index], p.beta, p.eta, p.mu, self.signed)

    def reconstruction(self, h_image, h_text, s):
        return djsrh_loss(h_image, h_text, s, self.params.lambda1, self.params.lambda2)


# --------------------------------------------------------------------------- optimisers


def sgd_per_network(model: DJSRH, cfg, params) -> list[torch.optim.Optimizer]:
    """One SGD per network as the authors' train.py: the image net at cfg.lr, the text net at
    cfg.lr * params.text_lr_ratio; momentum params.momentum, weight decay cfg.weight_decay on
    every parameter (biases too)."""
    return [torch.optim.SGD(model.image_net.parameters(), lr=cfg.lr, momentum=params.momentum,
                            weight_decay=cfg.weight_decay),
            torch.optim.SGD(model.text_net.parameters(), lr=cfg.lr * params.text_lr_ratio,
                            momentum=params.momentum, weight_decay=cfg.weight_decay)]


def build(bits: int, cfg, params: DjsrhParams, data, graph):
    model = DJSRH.for_data(bits, cfg, data, image_trunk=True)
    return model, DjsrhObjective(model, (data.image, data.text), params)


METHOD = Method(
    name="djsrh", kind="unsupervised", source="zs-zhong/DJSRH",
    summary="joint-semantics affinity S = mu((1-eta) S~ + eta S~S~^T/n), S~ = beta S_I + (1-beta) S_T "
            "from the frozen features; MSE of the codes' I-I, I-T, T-T cosines to S",
    build=build, from_checkpoint=DJSRH.from_checkpoint, params=DjsrhParams,
    optimizers=sgd_per_network, lr_scale=constant_lr,
    # settings.py (MIRFlickr): LR_IMG, WEIGHT_DECAY, BATCH_SIZE; models.py: 4096-wide fc7 and
    # TxtNet; AlexNet's classifier dropout 0.5 for the trunk that stands in for it
    training_defaults={"lr": 1e-3, "weight_decay": 5e-4, "batch_size": 32, "feature_dim": 4096,
                       "dropout": 0.5},
    tuning_space={"lr": Range(1e-4, 1e-2), "lambda1": Range(0.01, 1.0)})
