"""DCMH (Jiang and Li, CVPR 2017; authors' code jiangqy/DCMH-CVPR2017, MATLAB and TensorFlow;
WendellGul/DCMH is a PyTorch port): real-valued network outputs F (image) and G (text) of the
whole training set, trained against

    J = sum_ij [log(1 + e^theta_ij) - S_ij theta_ij] + gamma (||B - F||^2 + ||B - G||^2)
        + eta (||F^T 1||^2 + ||G^T 1||^2),      theta_ij = 1/2 F_i . G_j,   S_ij = [l_i . l_j > 0]

by alternating passes: each epoch one pass updates the image network with the stored G of the
whole set held fixed, then one pass updates the text network with F fixed; each batch's outputs
replace their rows of F or G as they are computed; B = sign(F + G) after both passes.

On our frozen cached features: a trunk (egath.methods.base.trunk, width feature_dim) stands in
for the CNN-F the authors fine-tune, followed by their fc8 hash layer; the text network is
theirs, a two-layer MLP. Its inputs are standardised (egath.inputs, METHOD.inputs): the authors
feed mean-free images to a CNN-F whose raw fc7 activations its 0.01 init is set for, and (in
MATLAB) mean-free tags. The outputs carry no tanh (as theirs); h = tanh(output) is what the interface shows, with
the same sign.
Differences from the authors' code: docs/methods.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.functional import softplus

from egath.methods.base import Method, Objective, Range, Rebuildable, binarize, label_similarity, trunk

INIT_STD = 0.01  # net_structure_txt.m, net_structure_img.m: weights and biases 0.01 * randn


@dataclass(frozen=True)
class DcmhParams:
    gamma: float = 1.0  # weight of the quantization term (DCMH_matlab/DCMH_matlab/DCMH_demo.m param.gamma)
    eta: float = 1.0  # weight of the bit-balance term (DCMH_matlab/DCMH_matlab/DCMH_demo.m param.eta)
    text_hidden: int = 8192  # the text MLP's hidden layer (DCMH_matlab/DCMH_matlab/net_structure_txt.m)


@dataclass
class DcmhConfig:
    image_dim: int  # CLIP image embedding size
    text_dim: int  # bag-of-words or CLIP text embedding size
    bits: int
    hidden_dim: int = 4096  # trunk width, CNN-F's fc7
    text_hidden: int = 8192
    dropout: float = 0.0  # in the trunk; the authors' network has none


def normal_linear(in_dim: int, out_dim: int) -> nn.Linear:
    layer = nn.Linear(in_dim, out_dim)
    nn.init.normal_(layer.weight, 0.0, INIT_STD)
    nn.init.normal_(layer.bias, 0.0, INIT_STD)
    return layer


class DCMH(Rebuildable):
    config_class = DcmhConfig

    def __init__(self, cfg: DcmhConfig):
        super().__init__()
        self.cfg = cfg
        # trunk for CNN-F up to relu7, then fc8 (4096 -> K)
        self.image_net = nn.Sequential(trunk(cfg.image_dim, cfg), normal_linear(cfg.hidden_dim, cfg.bits))
        self.text_net = nn.Sequential(normal_linear(cfg.text_dim, cfg.text_hidden), nn.ReLU(),
                                      normal_linear(cfg.text_hidden, cfg.bits))
    def image_output(self, x: torch.Tensor) -> torch.Tensor:
        return self.image_net(x)  # F rows (B, K), real-valued

    def text_output(self, x: torch.Tensor) -> torch.Tensor:
        return self.text_net(x)  # G rows (B, K)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.image_output(x))  # the sign is the code; tanh keeps h in (-1, 1)

    def encode_text(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.text_output(x))

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        f, g = self.image_output(image), self.text_output(text)
        return {"f": f, "g": g, "h_image": torch.tanh(f), "h_text": torch.tanh(g)}


def dcmh_loss(own: torch.Tensor, other: torch.Tensor, rest_sum: torch.Tensor, similarity: torch.Tensor,
              codes: torch.Tensor, gamma: float, eta: float, normaliser: float) -> dict[str, torch.Tensor]:
    """The part of J that one batch of one modality's outputs moves, divided by `normaliser`
    (the authors' batch_size * N):
        likelihood   = sum_{b, j} log(1 + e^theta_bj) - S_bj theta_bj,  theta = 1/2 own other^T
        quantization = ||codes - own||^2
        balance      = ||own^T 1 + rest_sum||^2
    own (b, K) the batch's outputs; other (N, K) the other modality's stored outputs (fixed);
    rest_sum (K,) the sum of this modality's stored outputs outside the batch; similarity (b, N);
    codes (b, K) the batch's rows of B."""
    theta = 0.5 * own @ other.T  # (b, N)
    terms = {"likelihood": (softplus(theta) - similarity * theta).sum() / normaliser,
             "quantization": (codes - own).pow(2).sum() / normaliser,
             "balance": (own.sum(0) + rest_sum).pow(2).sum() / normaliser}
    terms["total"] = terms["likelihood"] + gamma * terms["quantization"] + eta * terms["balance"]
    return terms


class DcmhObjective(Objective):
    """F, G (N, K) and B of the whole training set; one pass per modality per epoch."""

    phases = ("image", "text")  # DCMH_tensorflow/DCMH_tensorflow/DCMH_demo.py: update F, then G, then B

    def __init__(self, labels: torch.Tensor, bits: int, params: DcmhParams, batch_size: int, seed: int):
        self.labels = labels  # (N, C)
        self.params = params
        self.normaliser = float(batch_size * labels.shape[0])  # the authors divide by batch_size * N
        # F, G start as standard normal draws and B = sign(F + G) (DCMH_demo.py), drawn on the CPU
        generator = torch.Generator().manual_seed(seed)
        n = labels.shape[0]
        self.F = torch.randn(n, bits, generator=generator).to(labels.device)
        self.G = torch.randn(n, bits, generator=generator).to(labels.device)
        self.B = binarize(self.F + self.G)
        self.phase = "image"

    def begin_phase(self, phase: str) -> None:
        self.phase = phase

    def loss(self, out: dict, labels: torch.Tensor, index: torch.Tensor) -> dict:
        own, stored, other = (out["f"], self.F, self.G) if self.phase == "image" else (out["g"], self.G, self.F)
        stored[index] = own.detach()  # the batch's new outputs join the stored set at once
        outside = torch.ones(stored.shape[0], dtype=torch.bool, device=stored.device)
        outside[index] = False
        return dcmh_loss(own, other, stored[outside].sum(0), label_similarity(labels, self.labels),
                         self.B[index], self.params.gamma, self.params.eta, self.normaliser)

    def end_epoch(self, h_image: torch.Tensor, h_text: torch.Tensor) -> dict:
        before = self.B
        self.B = binarize(self.F + self.G)  # sign(gamma (F + G)), gamma > 0
        return {"code_flip_rate": (self.B != before).float().mean()}

    def state_dict(self) -> dict:
        return {"F": self.F, "G": self.G, "B": self.B}

    def load_state_dict(self, state: dict) -> None:
        self.F, self.G, self.B = state["F"], state["G"], state["B"]


def build(bits: int, cfg, params: DcmhParams, data, graph):
    model_cfg = DcmhConfig(image_dim=data.image.shape[1], text_dim=data.text.shape[1], bits=bits,
                           hidden_dim=cfg.feature_dim, text_hidden=params.text_hidden, dropout=cfg.dropout)
    return DCMH(model_cfg), DcmhObjective(data.labels, bits, params, cfg.batch_size, cfg.seed)


def optimizers(model: DCMH, cfg, params) -> list[torch.optim.Optimizer]:
    """update_net.m: plain SGD, w <- w - lr (dJ/dw + 5e-4 w), one per network; a network whose
    phase it is not gets no gradient, and SGD leaves it alone (decay included)."""
    return [torch.optim.SGD(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
            for net in (model.image_net, model.text_net)]


def logspace_schedule(cfg, params, progress: float) -> float:
    """DCMH_demo.m: lr = logspace(log10 lr, log10 lr_min, epochs), one value per epoch, so the
    last epoch trains at lr_min."""
    return (cfg.lr_min / cfg.lr) ** (math.floor(progress) / max(cfg.epochs - 1, 1))


METHOD = Method(
    name="dcmh", kind="supervised", source="jiangqy/DCMH-CVPR2017",
    summary="real-valued outputs F, G of the whole set; pairwise negative log-likelihood of theta = F G^T / 2 "
            "+ gamma ||B - F||^2, ||B - G||^2 + eta bit balance; alternating image and text passes, B = sign(F + G)",
    build=build, from_checkpoint=DCMH.from_checkpoint, params=DcmhParams, optimizers=optimizers,
    lr_scale=logspace_schedule,
    # inputs: standardised (the default form): CNN-F fc7 activations and mean-free tags are what its
    # 0.01 init, learning rates and 1 / (batch N) normaliser were made for
    training_defaults={
        "lr": 10 ** -1.5, "lr_min": 1e-3,  # DCMH_demo.m: logspace(-1.5, -3, maxIter)
        "weight_decay": 5e-4,  # update_net.m
        "batch_size": 128,  # DCMH_demo.m
        "feature_dim": 4096, "dropout": 0.0,  # CNN-F's fc7 width, which fc8 reads
    },
    tuning_space={"lr": Range(10 ** -2.5, 10 ** -0.5), "gamma": Range(0.1, 10.0)})
