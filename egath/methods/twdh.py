"""TwDH (Tu et al., IEEE TMM 2024, "Two-step discrete hashing for cross-modal retrieval"; its
authors' code: runners/TwDH and models/TwDH in kalenforn/clip-based-cross-modal-hash).

Two steps, each a job of the workflow:

1. the transform (`fit_transform`, rule first_stage): hash centres, C rows of L = `long_bits` bits
   and C rows of K bits (CSQ's: rows of a Hadamard matrix), and a matrix T (2L, 2K) trained on the
   training labels alone so that the pairwise softmax of onehot(long centre) T is the one-hot of the
   short centre, for every label set of the training pairs;
2. the network (`build`, rule train): per modality a DCMHT hash layer that gives L-bit codes as
   2-way softmaxes P (B, 2L), trained towards the long centre of each pair's labels by binary cross
   entropy and a quantisation term. The K-bit code is the pairwise softmax of P T (B, 2K).

Bits come in pairs of entries (p_-, p_+) of a (B, 2K) vector, and the sign of p_+ - p_- is the bit.
Here on frozen cached CLIP features: a trunk (egath.methods.base.trunk) stands in for the CLIP the
authors fine-tune. Differences from the authors' code: docs/methods.md.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from egath import settings
from egath.methods.base import (HeadConfig, Method, Range, Rebuildable, StatelessObjective, bert_adam, trunk,
                                warmup_cosine)
from egath.methods.dchmt import kaiming_fan_out_

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TransformSettings:
    """The first step's settings (runners/TwDH/transform_matrix_generation/train.py)."""
    long_bits: int = 512  # L: get_args --long-dim; configs/TwDH/config.yaml model.long_dim
    epochs: int = 100  # get_args --post-epochs (the schedule's length; its loop reads an undefined args.epochs)
    batch_size: int = 200  # get_args --batch-size
    lr: float = 0.1  # runners/TwDH/README.md's command --post-lr 0.1 (get_args' default: 0.001)
    weight_decay: float = 0.2  # get_args --weight-decay
    warmup_proportion: float = 0.1  # get_args --warmup-proportion
    max_grad_norm: float = 1.0  # train.py: BertAdam(max_grad_norm=1.0)
    l1_weight: float = 1e-3  # train.py: train(alpha=0.001), the lasso on T
    stop_when_lossless: bool = True  # train.py: stops once every label's long centre maps to its short one
    seed: int = 0  # centres, T's initialisation and the tie-breaking draws (theirs: unseeded)

    def __post_init__(self):
        if self.long_bits < 2 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"method twdh: params.transform needs long_bits >= 2, epochs >= 1 and "
                             f"batch_size >= 1, got {self}")

    @classmethod
    def from_dict(cls, values: dict) -> "TransformSettings":
        return settings.from_dict(cls, values, "settings of method twdh's params.transform")


@dataclass(frozen=True)
class TwdhParams:
    quan_alpha: float = 0.5  # configs/TwDH/config.yaml model.quan_alpha: weight of the long quantisation term
    low_rate: float = 0.0  # configs/TwDH/config.yaml model.low_rate: weight of the short terms
    warmup_proportion: float = 0.1  # configs/TwDH/config.yaml optimizer.warmup_proportion
    heads: int = 8  # models/TwDH/TwDH.py: HashLayer(num_heads=8)
    # the first step's settings (TransformSettings): only these rerun the first stage
    transform: dict = field(default_factory=dict)

    def __post_init__(self):  # resolved, so that model.pt records every value the first step used
        object.__setattr__(self, "transform", asdict(TransformSettings.from_dict(self.transform)))


# --------------------------------------------------------------------------- codes as 2-way choices

def pair_softmax(z: torch.Tensor) -> torch.Tensor:
    """(B, 2K) scores -> (B, 2K) probabilities, a softmax over each pair of entries (2k, 2k + 1):
    p_+ = sigmoid(z_+ - z_-), p_- = sigmoid(z_- - z_+), the same values 5x faster than a softmax
    over pairs on the CPU. (1 - p_+ for p_- would round to 0 where p_+ rounds to 1, and the BCE
    gradient through it would vanish.)"""
    pairs = z.unflatten(-1, (-1, 2))
    difference = pairs[..., 1] - pairs[..., 0]
    return torch.sigmoid(torch.stack((-difference, difference), -1)).flatten(-2)


def pair_code(p: torch.Tensor) -> torch.Tensor:
    """(B, 2K) pair probabilities -> (B, K) p_+ - p_- in (-1, 1), whose sign is the chosen bit."""
    pairs = p.unflatten(-1, (-1, 2))
    return pairs[..., 1] - pairs[..., 0]


def pair_onehot(codes: torch.Tensor) -> torch.Tensor:
    """(B, K) codes in {-1, +1} -> (B, 2K): (1, 0) for -1, (0, 1) for +1 (models/TwDH/TwDH.py hash_convert)."""
    plus = (codes > 0).to(codes.dtype if codes.is_floating_point() else torch.float32)
    return torch.stack((1 - plus, plus), -1).flatten(-2)


def quantization_term(p: torch.Tensor) -> torch.Tensor:
    """1 - mean((2 p - 1)^2) over every entry: 0 when each pair is a hard choice, 1 at (0.5, 0.5)."""
    return 1 - (2 * p - 1).pow(2).mean()


# --------------------------------------------------------------------------- hash centres

def sylvester_hadamard(n: int) -> torch.Tensor:
    """The n x n Hadamard matrix of Sylvester's construction (n a power of two), entries +-1."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"a Sylvester Hadamard matrix needs a power of two, got {n}")
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    return h


def hash_centers(n_labels: int, bits: int, generator: torch.Generator) -> torch.Tensor:
    """One centre per label, (C, bits) in {-1, +1}, as CSQ makes them (its hash-centre tutorial,
    yuanli2333/Hadamard-Matrix-for-hashing): C distinct rows of [H; -H], H the bits x bits Hadamard
    matrix, drawn at random as TwDH's shipped centres are, where bits is a power of two and
    C <= 2 bits (any two rows then differ in bits / 2 or bits places); otherwise rows with half
    their bits -1 at random places."""
    if bits & (bits - 1) == 0 and n_labels <= 2 * bits:
        h = sylvester_hadamard(bits)
        return torch.cat((h, -h))[torch.randperm(2 * bits, generator=generator)[:n_labels]]
    centers = torch.ones(n_labels, bits)
    for row in centers:
        row[torch.randperm(bits, generator=generator)[:bits // 2]] = -1
    return centers


def random_signs(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n draws of -1 or +1, on the CPU (the same on every device)."""
    return torch.randint(0, 2, (n,), generator=generator).float() * 2 - 1


def center_targets(labels: torch.Tensor, centers: torch.Tensor, tie: torch.Tensor) -> torch.Tensor:
    """(B, K) target codes: per sample the sign of the mean of its labels' centres, and where that
    mean is 0 (as many -1 as +1 among them) the bit of `tie` (K,), one draw for the whole batch
    (models/TwDH/TwDH.py hash_center_multilables). A sample without labels takes `tie` whole."""
    votes = torch.sign(labels.to(centers.dtype) @ centers)
    return torch.where(votes == 0, tie.to(votes), votes)


# --------------------------------------------------------------------------- step 1: the transform

def transform_loss(transform: torch.Tensor, long_targets: torch.Tensor, short_targets: torch.Tensor,
                   l1_weight: float) -> dict[str, torch.Tensor]:
    """The first step's loss (transform_matrix_generation/train.py), with q = pair_softmax(x T),
    x = pair_onehot(long target) (B, 2L), y = pair_onehot(short target) (B, 2K):
    BCE(q, y) (mean over entries) + quantization_term(q) + l1_weight * sum |T|."""
    q = pair_softmax(pair_onehot(long_targets) @ transform)
    terms = {"bce": F.binary_cross_entropy(q, pair_onehot(short_targets)), "quantization": quantization_term(q),
             "l1": transform.abs().sum()}
    terms["total"] = terms["bce"] + terms["quantization"] + l1_weight * terms["l1"]
    return terms


def maps_losslessly(transform: torch.Tensor, long_centers: torch.Tensor, short_centers: torch.Tensor) -> bool:
    """Whether T takes every label's long centre to its short centre (train.py `check`)."""
    mapped = pair_code(pair_softmax(pair_onehot(long_centers) @ transform))
    return bool(torch.equal(torch.where(mapped > 0, 1.0, -1.0), short_centers.to(mapped)))


def transform_optimizer(transform: nn.Parameter, s: TransformSettings) -> torch.optim.AdamW:
    """train.py: BertAdam(lr=post_lr, weight_decay) on T alone, as every BertAdam here."""
    return bert_adam([transform], s)


def transform_epoch(transform: nn.Parameter, optimizer, labels: torch.Tensor, centers: tuple, s: TransformSettings,
                    epoch: int, generator: torch.Generator) -> dict[str, float]:
    """One epoch of the first step over the training labels (N, C) in a seeded order; returns the
    mean of each loss term over the samples and the epoch's first learning rate."""
    long_centers, short_centers = centers
    n = labels.shape[0]
    sums: dict[str, float] = {}
    batches = torch.randperm(n, generator=torch.Generator().manual_seed(s.seed + epoch)).split(s.batch_size)
    for step, batch in enumerate(batches):
        for group in optimizer.param_groups:  # BertAdam's warmup_cosine over every step of training
            group["lr"] = s.lr * warmup_cosine(s, s, epoch + step / len(batches))
        batch_labels = labels[batch.to(labels.device)]
        # one tie-breaking draw per batch and centre length, as hash_center_multilables
        long_targets = center_targets(batch_labels, long_centers, random_signs(long_centers.shape[1], generator))
        short_targets = center_targets(batch_labels, short_centers, random_signs(short_centers.shape[1], generator))
        terms = transform_loss(transform, long_targets, short_targets, s.l1_weight)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        torch.nn.utils.clip_grad_norm_(transform, s.max_grad_norm)  # BertAdam clips each tensor's gradient
        optimizer.step()
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach()) * len(batch)
    return {"lr": s.lr * warmup_cosine(s, s, epoch), **{name: value / n for name, value in sums.items()}}


def fit_transform(bits: int, settings: dict, data, device: str = "cpu", resume: dict | None = None,
                  save: Callable[[dict], None] | None = None) -> dict:
    """TwDH's first step for `bits`-bit codes, on the training labels (data.labels, (N, C)).

    Returns {"tensors": {long_centers (C, L), short_centers (C, K), transform (2L, 2K)}, "summary"}.
    `save(state)` gets the state after each epoch, and `resume` takes such a state back: a resumed
    run ends as an uninterrupted one."""
    s = TransformSettings.from_dict(settings)
    labels = data.labels.to(device)
    generator = torch.Generator().manual_seed(s.seed)  # on the CPU: the same draws on every device
    centers = tuple(hash_centers(labels.shape[1], size, generator).to(device) for size in (s.long_bits, bits))
    # model.py Matrix: uniform on [-1, 1]
    transform = nn.Parameter(torch.empty(2 * s.long_bits, 2 * bits).uniform_(-1, 1, generator=generator).to(device))
    optimizer = transform_optimizer(transform, s)
    epoch, history, lossless = 0, [], False
    if resume is not None:
        with torch.no_grad():
            transform.copy_(resume["transform"])
        optimizer.load_state_dict(resume["optimizer"])
        generator.set_state(resume["generator"])
        epoch, history, lossless = resume["epoch"], resume["history"], resume["lossless"]
    while epoch < s.epochs and not (lossless and s.stop_when_lossless):
        record = transform_epoch(transform, optimizer, labels, centers, s, epoch, generator)
        epoch += 1
        lossless = maps_losslessly(transform.detach(), *centers)
        history.append({"epoch": epoch, **record, "lossless": lossless})
        log.info("transform epoch %d/%d %s", epoch, s.epochs,
                 " ".join(f"{k}={v:.4g}" for k, v in history[-1].items() if k != "epoch"))
        if save is not None:
            save({"transform": transform.detach().cpu(), "optimizer": optimizer.state_dict(),
                  "generator": generator.get_state(), "epoch": epoch, "history": history, "lossless": lossless})
    return {"tensors": {"long_centers": centers[0].cpu(), "short_centers": centers[1].cpu(),
                        "transform": transform.detach().cpu()},
            "summary": {"epochs": epoch, "lossless": lossless, "history": history}}


# --------------------------------------------------------------------------- step 2: the network

@dataclass
class TwdhConfig(HeadConfig):
    long_bits: int = 512  # L, the width of the long codes (from the first step's output)
    heads: int = 8


def single_token_attention(attention: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    """Self-attention over one token (B, D): its only key gets weight 1, so the output is the
    output projection of the value projection; the query and key projections, which
    nn.MultiheadAttention would compute, change nothing."""
    dim = attention.embed_dim
    value = F.linear(x, attention.in_proj_weight[2 * dim:], attention.in_proj_bias[2 * dim:])
    return attention.out_proj(value)


class LongHash(nn.Module):
    """DCMHT's modality hash layer as TwDH uses it (models/DCMHT/hash/hash.py ModalityHash), behind
    the trunk: self-attention over the one feature token (single_token_attention; the layer is
    kept so that the parameters are the authors'), a norm (BatchNorm for images, LayerNorm for
    texts), Linear to 2L, ReLU, and the pairwise softmax: (B, in) -> (B, 2L)."""

    def __init__(self, in_dim: int, cfg: TwdhConfig, norm: nn.Module):
        super().__init__()
        self.trunk = trunk(in_dim, cfg)
        self.attention = nn.MultiheadAttention(cfg.hidden_dim, cfg.heads, batch_first=True)
        self.norm = norm
        self.fc = nn.Linear(cfg.hidden_dim, 2 * cfg.long_bits)
        kaiming_fan_out_(self.fc, fan_out=2 * cfg.long_bits)  # weights_init_kaiming: one layer, fan-out 2L

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = single_token_attention(self.attention, self.trunk(x))  # (B, hidden)
        return pair_softmax(torch.relu(self.fc(self.norm(f))))


class TWDH(Rebuildable):
    """Long hash layers per modality and the first step's transform T (a buffer: saved with the
    weights, never trained). The code is the short one, pairwise softmax of P T."""
    config_class = TwdhConfig

    def __init__(self, cfg: TwdhConfig, transform: torch.Tensor | None = None):
        super().__init__()
        if cfg.hidden_dim % cfg.heads:
            raise ValueError(f"twdh: feature_dim {cfg.hidden_dim} is not a multiple of params.heads {cfg.heads}")
        self.cfg = cfg
        self.image_net = LongHash(cfg.image_dim, cfg, nn.BatchNorm1d(cfg.hidden_dim))
        self.text_net = LongHash(cfg.text_dim, cfg, nn.LayerNorm(cfg.hidden_dim))
        shape = (2 * cfg.long_bits, 2 * cfg.bits)
        self.register_buffer("transform", torch.zeros(shape) if transform is None else transform.clone())

    def short(self, long: torch.Tensor) -> torch.Tensor:
        return pair_softmax(long @ self.transform)  # (B, 2K)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return pair_code(self.short(self.image_net(x)))

    def encode_text(self, x: torch.Tensor) -> torch.Tensor:
        return pair_code(self.short(self.text_net(x)))

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        long_image, long_text = self.image_net(image), self.text_net(text)
        short_image, short_text = self.short(long_image), self.short(long_text)
        return {"h_image": pair_code(short_image), "h_text": pair_code(short_text), "long_image": long_image,
                "long_text": long_text, "short_image": short_image, "short_text": short_text}


def twdh_loss(out: dict[str, torch.Tensor], labels: torch.Tensor, long_centers: torch.Tensor,
              short_centers: torch.Tensor, long_tie: torch.Tensor, short_tie: torch.Tensor,
              quan_alpha: float, low_rate: float) -> dict[str, torch.Tensor]:
    """The second step's loss (models/TwDH/TwDH.py compute_loss), Y = pair_onehot(centre target):
    L = (BCE(P_I, Y_L) + BCE(P_T, Y_L)) / 2 + quan_alpha (q(P_I) + q(P_T)) / 2
      + low_rate [(BCE(S_I, Y_K) + BCE(S_T, Y_K)) / 2 + (q(S_I) + q(S_T)) / 2],
    P the long pair probabilities (B, 2L), S the short ones (B, 2K), q the quantization_term, BCE
    the mean over entries."""
    terms = {}
    for size, centers, tie in (("long", long_centers, long_tie), ("short", short_centers, short_tie)):
        target = pair_onehot(center_targets(labels, centers, tie)).to(out[f"{size}_image"])
        image, text = out[f"{size}_image"], out[f"{size}_text"]
        terms[f"{size}_bce"] = 0.5 * (F.binary_cross_entropy(image, target) + F.binary_cross_entropy(text, target))
        terms[f"{size}_quantization"] = 0.5 * (quantization_term(image) + quantization_term(text))
    terms["total"] = (terms["long_bce"] + quan_alpha * terms["long_quantization"]
                      + low_rate * (terms["short_bce"] + terms["short_quantization"]))
    return terms


def build(bits: int, cfg, params: TwdhParams, data, graph, first_stage: dict):
    """The network and its loss, from the first step's centres and transform (first_stage.pt)."""
    long_centers, short_centers, transform = (first_stage[k] for k in ("long_centers", "short_centers", "transform"))
    n_labels, long_bits = data.labels.shape[1], long_centers.shape[1]
    if (long_centers.shape[0], tuple(short_centers.shape), tuple(transform.shape)) != (
            n_labels, (n_labels, bits), (2 * long_bits, 2 * bits)):
        raise ValueError(f"twdh: the first stage's centres {tuple(long_centers.shape)}, {tuple(short_centers.shape)} "
                         f"and transform {tuple(transform.shape)} do not fit {n_labels} labels at {bits} bits")
    model = TWDH(TwdhConfig.for_data(bits, cfg, data, long_bits=long_bits, heads=params.heads),
                 transform.float())
    long_centers, short_centers = long_centers.float().to(data.labels.device), short_centers.float().to(data.labels.device)

    def loss(out, labels):  # one tie-breaking draw per batch, from the seeded generator the checkpoint keeps
        return twdh_loss(out, labels, long_centers, short_centers, random_signs(long_bits), random_signs(bits),
                         params.quan_alpha, params.low_rate)
    return model, StatelessObjective(loss)


def optimizers(model: TWDH, cfg, params: TwdhParams) -> list[torch.optim.Optimizer]:
    """runners/base.py build_optimizer: BertAdam at lr 1e-3, weight decay 0.2 for the hash layers (the
    trunk, standing in for the CLIP it fine-tunes at 1e-5, at the same rate)."""
    return [bert_adam([{"params": model.image_net.parameters()}, {"params": model.text_net.parameters()}], cfg)]


METHOD = Method(
    name="twdh", kind="supervised", source="kalenforn/clip-based-cross-modal-hash (runners/TwDH)",
    summary="two steps: a transform T from long to short hash centres fitted on the labels (rule "
            "first_stage), then long 2-way-softmax codes trained towards their labels' centres by BCE "
            "and quantisation; the code is softmax(P T)",
    build=build, from_checkpoint=TWDH.from_checkpoint, params=TwdhParams, optimizers=optimizers,
    lr_scale=warmup_cosine,
    # configs/TwDH/config.yaml: optimizer lr 0.001, weight_decay 0.2; run batch_size 128
    training_defaults={"lr": 1e-3, "weight_decay": 0.2, "batch_size": 128},
    tuning_space={"lr": Range(1e-4, 1e-2), "quan_alpha": Range(0.05, 5.0)})
