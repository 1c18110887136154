"""UCCH (Hu et al., TPAMI 2023; authors' code penghu-cs/UCCH): unsupervised contrastive
cross-modal hashing with a momentum-updated hashing memory bank.

Each modality has an MLP on pre-extracted features whose output is tanh, then scaled to unit
length: h (B, L). The memory bank holds one continuous vector v_i per training pair; its signs
are the pair's hash key k_i = sgn(v_i) / sqrt(L). The loss, beta Lc + (1 - beta) Lr, needs no
labels:
- Lc (contrastive hashing): each image and each text of the batch must pick its own pair's key
  among K keys drawn at random from the bank (InfoNCE, temperature tau). Keys are binary and
  carry no gradient, so the codes are learnt without a continuous relaxation of the keys; the
  bank follows the outputs by v_i <- normalise(delta v_i + (1 - delta) normalise((h_I + h_T) / 2))
  after each batch (the paper's "momentum optimizer").
- Lr (cross-modal ranking): a bidirectional softmax ranking over the batch in which the
  negatives outside the margin m are lowered by a shift xi (the paper's upper bound of the
  max-margin ranking loss).
In the warm-up epochs the keys are the batch's own sgn(h_I + h_T) instead of the bank's, and
the bank is overwritten by the outputs (momentum 0), as the authors' NCE/NCEAverage.py does.

Run here, as the authors designed it, on pre-extracted features: the cached CLIP image
embeddings and the bag-of-words (or CLIP text embeddings). Differences from the authors' code:
docs/methods.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from egath.methods.base import HashNets, Method, Objective, Range, trainable


@dataclass(frozen=True)
class UcchParams:
    alpha: float = 0.7  # beta, weight of Lc against Lr: README.md (MIRFlickr features; utils/config.py says 0.9)
    momentum: float = 0.4  # delta of the memory-bank update: utils/config.py (paper 4.2.2)
    negatives: int = 4096  # K keys drawn from the bank per sample: utils/config.py (paper 4.2.2)
    temperature: float = 0.9  # tau of Lc: utils/config.py (paper 4.2.2)
    margin: float = 0.2  # m of Lr: utils/config.py and README.md (paper 4.2.2)
    shift: float = 0.1  # xi of Lr: README.md (MIRFlickr features; utils/config.py says 1)
    warmup_epochs: int = 1  # epochs with in-batch keys and momentum 0: utils/config.py (warmup_epoch)
    image_layers: int = 3  # linear layers of the image MLP: utils/config.py (num_hiden_layers[0])
    text_layers: int = 2  # linear layers of the text MLP: utils/config.py (num_hiden_layers[1])
    max_grad_norm: float = 1.0  # the gradient is clipped to this norm before each step: UCCH.py
    milestones: tuple = (30, 60, 90, 120)  # lr x lr_gamma after these epochs: UCCH.py (MultiStepLR)
    lr_gamma: float = 0.1  # UCCH.py (MultiStepLR)

    def __post_init__(self):
        if not 0 <= self.momentum < 1:
            raise ValueError(f"ucch momentum must be in [0, 1), got {self.momentum}")
        if self.temperature <= 0 or self.negatives < 1 or self.margin < 0:
            raise ValueError("ucch needs temperature > 0, negatives >= 1 and margin >= 0, got "
                             f"{self.temperature}, {self.negatives}, {self.margin}")
        if self.image_layers < 1 or self.text_layers < 1:
            raise ValueError(f"ucch needs at least one layer per modality, got "
                             f"{self.image_layers} and {self.text_layers}")


# --------------------------------------------------------------------------- model


@dataclass
class UcchConfig:
    image_dim: int  # CLIP image embedding size
    text_dim: int  # bag-of-words size or CLIP text embedding size
    bits: int
    hidden_dim: int = 8192  # width of the hidden layers (TrainConfig.feature_dim; 1024 * 8 in nets/*.py)
    image_layers: int = 3
    text_layers: int = 2


class UnitTanh(nn.Module):
    """UCCH's output layer: tanh, then scaled to unit length (nets/ImageNet.py, norm=True). No
    straight-through estimator: the sign is taken only for retrieval and for the bank's keys."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(x)
        return h / h.norm(dim=1, keepdim=True)


def hash_mlp(in_dim: int, hidden_dim: int, bits: int, layers: int) -> nn.Sequential:
    """`layers` linear layers with ReLU between them (in -> hidden -> ... -> bits; one layer:
    in -> bits), then UnitTanh; PyTorch's default init, as the authors leave it."""
    widths = [in_dim] + [hidden_dim] * (layers - 1) + [bits]
    modules: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        modules += [nn.Linear(a, b)] + ([nn.ReLU()] if i < layers - 1 else [])
    return nn.Sequential(*modules, UnitTanh())


class UCCH(HashNets):
    """Image MLP (3 layers) and text MLP (2 layers) on the frozen features, unit-length tanh outputs."""

    config_class = UcchConfig

    def __init__(self, cfg: UcchConfig):
        super().__init__()
        self.cfg = cfg
        self.image_net = hash_mlp(cfg.image_dim, cfg.hidden_dim, cfg.bits, cfg.image_layers)
        self.text_net = hash_mlp(cfg.text_dim, cfg.hidden_dim, cfg.bits, cfg.text_layers)



# --------------------------------------------------------------------------- losses


def binary_keys(v: torch.Tensor) -> torch.Tensor:
    """Unit-length hash keys sgn(v) / sqrt(L), no gradient. (The authors score with sgn(v) and
    divide by tau sqrt(L): the same logits.)"""
    return torch.sign(v.detach()) / math.sqrt(v.shape[1])


def contrastive_term(h: torch.Tensor, keys: torch.Tensor, rows: torch.Tensor, temperature: float):
    """-mean_i log softmax_k(<h_i, keys[rows_ik]> / tau) at k = 0: each sample's positive key is
    rows[i, 0], the rest of row i are its negatives (InfoNCE, paper Eq. 3-4; NCE/NCECriterion.py).
    h (B, L), keys (M, L), rows (B, K + 1) indices into keys."""
    logits = (h @ keys.T).gather(1, rows) / temperature  # (B, K + 1)
    return F.cross_entropy(logits, torch.zeros_like(rows[:, 0]))


def ranking_loss(h_image: torch.Tensor, h_text: torch.Tensor, margin: float, shift: float):
    """UCCH's cross-modal ranking loss (paper Eq. 8 and 14 with kappa = 1; src/utils.py
    ContrastiveLoss): with M = h_I h_T^T,
      image query i: S_ij = M_ij if M_ij >= M_ii - m, else M_ij - xi;  Lxy = mean_i [m + log sum_j exp S_ij - S_ii]
      text query j:  S'_ij = M_ij if M_ij >= M_jj - m, else M_ij - xi; Lyx = mean_j [m + log sum_i exp S'_ij - S'_jj]
    Lr = Lxy + Lyx. Which pairs fall inside the margin is read off the scores, without gradient."""
    scores = h_image @ h_text.T  # (B, B)
    diagonal = scores.diagonal()
    rows = torch.where(scores >= diagonal[:, None] - margin, scores, scores - shift)
    cols = torch.where(scores >= diagonal[None, :] - margin, scores, scores - shift)
    image_query = margin + torch.logsumexp(rows, 1) - rows.diagonal()
    text_query = margin + torch.logsumexp(cols, 0) - cols.diagonal()
    return image_query.mean() + text_query.mean()


@torch.no_grad()
def momentum_update(memory: torch.Tensor, index: torch.Tensor, h_image: torch.Tensor,
                    h_text: torch.Tensor, momentum: float) -> None:
    """In place, rows `index` of the bank: v_i <- normalise(delta v_i + (1 - delta) normalise((h_I,i + h_T,i) / 2))
    (paper Eq. 5, with the normalisations of NCE/NCEAverage.py)."""
    target = F.normalize((h_image + h_text) / 2, dim=1)
    memory[index] = F.normalize(momentum * memory[index] + (1 - momentum) * target, dim=1)


class UcchObjective(Objective):
    """beta Lc + (1 - beta) Lr of a batch, and the hashing memory bank of the whole training set
    (N, L), updated after every batch. Reads no labels."""

    def __init__(self, n: int, bits: int, params: UcchParams, seed: int, device):
        self.params = params
        # the authors' initial bank: sgn(2s z - s), z ~ N(0, 1), s = 1 / sqrt(L / 3), i.e. each
        # bit is +1 with probability P(z > 1/2) = 0.31; drawn on the CPU, the same on any device
        z = torch.randn(n, bits, generator=torch.Generator().manual_seed(seed))
        self.memory = F.normalize(torch.sign(z - 0.5), dim=1).to(device)
        self.generator = torch.Generator(device=device).manual_seed(seed)  # draws the negatives
        self.epoch = 0  # epochs finished, for the warm-up

    def keys_and_rows(self, h_image: torch.Tensor, h_text: torch.Tensor, index: torch.Tensor, momentum: float):
        """The keys scored and, per sample, the positive's row then its negatives' rows."""
        n_batch = index.shape[0]
        if momentum <= 0:  # warm-up: the batch's own codes; the negatives are the other pairs of the batch
            ring = torch.arange(n_batch, device=index.device)
            return binary_keys(h_image + h_text), (ring[:, None] + ring[None, :]) % n_batch
        # K keys drawn uniformly, with replacement, from the whole bank (NCE/alias_multinomial.py
        # with equal weights): a draw may hit the positive itself, as theirs may
        negatives = torch.randint(self.memory.shape[0], (n_batch, self.params.negatives),
                                  generator=self.generator, device=self.memory.device)
        return binary_keys(self.memory), torch.cat([index[:, None], negatives], 1)

    def loss(self, out: dict, labels: torch.Tensor, index: torch.Tensor) -> dict:
        p = self.params
        h_image, h_text = out["h_image"], out["h_text"]
        momentum = 0.0 if self.epoch < p.warmup_epochs else p.momentum
        keys, rows = self.keys_and_rows(h_image, h_text, index, momentum)
        terms = {"contrastive": contrastive_term(h_image, keys, rows, p.temperature)
                 + contrastive_term(h_text, keys, rows, p.temperature),
                 "ranking": ranking_loss(h_image, h_text, p.margin, p.shift)}
        terms["total"] = p.alpha * terms["contrastive"] + (1 - p.alpha) * terms["ranking"]
        momentum_update(self.memory, index, h_image, h_text, momentum)  # after scoring, as theirs
        return terms

    def end_epoch(self, h_image: torch.Tensor, h_text: torch.Tensor) -> None:
        self.epoch += 1

    def state_dict(self) -> dict:
        return {"memory": self.memory.clone(), "epoch": self.epoch, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.memory = state["memory"].to(self.memory.device)
        self.epoch = state["epoch"]
        self.generator.set_state(state["generator"].cpu())  # torch.load may have moved it to the device


# --------------------------------------------------------------------------- optimiser, schedule


class ClippedAdam(torch.optim.Adam):
    """Adam that first clips the gradient of all its parameters together to a norm of at most
    `max_norm` (UCCH.py clips the image and text networks' gradients jointly to 1 before each step)."""

    def __init__(self, params, max_norm: float, **kwargs):
        super().__init__(params, **kwargs)
        self.max_norm = max_norm

    def step(self, closure=None):
        nn.utils.clip_grad_norm_([p for group in self.param_groups for p in group["params"]], self.max_norm)
        return super().step(closure)


def optimizers(model: nn.Module, cfg, params: UcchParams) -> list[torch.optim.Optimizer]:
    """One Adam over both networks, lr and weight decay from TrainConfig (UCCH.py: Adam, lr 1e-4, wd 1e-6)."""
    return [ClippedAdam(trainable(model), params.max_grad_norm, lr=cfg.lr, weight_decay=cfg.weight_decay)]


def multistep_decay(cfg, params: UcchParams, progress: float) -> float:
    """UCCH.py's MultiStepLR as it steps it (scheduler.step(epoch) after epoch `epoch`): epoch e
    (0-based) runs at lr * gamma^#{milestones m < e}, so the first decay comes one epoch after m."""
    epoch = math.floor(progress)
    return params.lr_gamma ** sum(m < epoch for m in params.milestones)


def build(bits: int, cfg, params: UcchParams, data, graph):
    model = UCCH(UcchConfig(image_dim=data.image.shape[1], text_dim=data.text.shape[1], bits=bits,
                            hidden_dim=cfg.feature_dim, image_layers=params.image_layers,
                            text_layers=params.text_layers))
    return model, UcchObjective(data.image.shape[0], bits, params, cfg.seed, data.image.device)


METHOD = Method(
    name="ucch", kind="unsupervised", source="penghu-cs/UCCH",
    summary="MLPs to unit-length tanh codes; InfoNCE against binary keys of a momentum-updated "
            "memory bank (K random negatives) plus a cross-modal softmax ranking loss with margin and shift",
    build=build, from_checkpoint=UCCH.from_checkpoint, params=UcchParams,
    optimizers=optimizers, lr_scale=multistep_decay,
    # UCCH.py / README.md: Adam at 1e-4, weight decay 1e-6, batches of 256, hidden width 1024 * 8
    training_defaults={"lr": 1e-4, "weight_decay": 1e-6, "batch_size": 256, "feature_dim": 8192},
    tuning_space={"lr": Range(1e-5, 1e-3), "alpha": Range(0.3, 0.95, log=False)})
