"""Baselines trained on the same frozen cached CLIP features as EGATH, so the table compares
hash heads and losses, not backbones: DCHMT, DSPH (supervised, CLIP-based peers of EGATH) and
PCA-ITQ (unsupervised, closed form, the bottom of the table).

The peers fine-tune CLIP; here CLIP is frozen, so each modality gets a small trunk
(Linear -> ReLU -> Dropout, width TrainConfig.feature_dim) in front of the method's own hash
layer. Both supervised baselines use the same trunk: they differ only in hash layer and loss.

Every model has a `cfg` dataclass (saved as `model_config`), forward(image, text) -> dict with
`h_image`, `h_text` in (-1, 1), encode_image / encode_text (continuous; the encoder takes the
sign), and `from_checkpoint(ckpt)`. `build(bits, cfg, data)` returns (model, objective).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# --------------------------------------------------------------------------- shared parts


@dataclass
class HeadConfig:
    image_dim: int  # CLIP image embedding size
    text_dim: int  # bag-of-words size or CLIP text embedding size
    n_labels: int
    bits: int
    hidden_dim: int = 512  # trunk width (TrainConfig.feature_dim)
    dropout: float = 0.1

    @classmethod
    def for_data(cls, bits: int, cfg, data) -> "HeadConfig":
        return cls(image_dim=data.image.shape[1], text_dim=data.text.shape[1],
                   n_labels=data.labels.shape[1], bits=bits, hidden_dim=cfg.feature_dim,
                   dropout=cfg.dropout)


def trunk(in_dim: int, cfg: HeadConfig) -> nn.Sequential:
    """Frozen feature (B, in_dim) -> (B, hidden_dim): stands in for the peers' fine-tuned CLIP."""
    return nn.Sequential(nn.Linear(in_dim, cfg.hidden_dim), nn.ReLU(), nn.Dropout(cfg.dropout))


def label_similarity(labels_a: torch.Tensor, labels_b: torch.Tensor) -> torch.Tensor:
    """S_ij = 1 if samples i and j share a label, else 0: (B, M)."""
    return (labels_a.float() @ labels_b.float().T > 0).float()


class StatelessObjective:
    """An objective that is a pure function of the batch: nothing to update or save per epoch."""

    def __init__(self, loss_fn):
        self._loss_fn = loss_fn

    def loss(self, out: dict, labels: torch.Tensor, batch: torch.Tensor) -> dict:
        return self._loss_fn(out, labels)

    def end_epoch(self, h_image: torch.Tensor, h_text: torch.Tensor) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class _Rebuildable(nn.Module):
    config_class = HeadConfig

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> "_Rebuildable":
        model = cls(cls.config_class(**ckpt["model_config"]))
        model.load_state_dict(ckpt["state_dict"])
        return model


# --------------------------------------------------------------------------- DCHMT

DCHMT_VARTHETA = 0.5  # rate of error code: negatives are pushed to ~vartheta*K differing bits (DCHMT repo default)
DCHMT_QUANTIZATION_WEIGHT = 1e-3  # quan_alpha of the author's later toolkit; the paper's select layer has none


class SelectHash(nn.Module):
    """DCHMT's selecting mechanism: each bit k chooses between -1 and +1 with a 2-way softmax,
    p_k = softmax(W_k f + b_k) (B, K, 2); the bit is the argmax, i.e. sign(p_k,+ - p_k,-)."""

    def __init__(self, in_dim: int, bits: int):
        super().__init__()
        self.fc = nn.Linear(in_dim, 2 * bits)  # the K per-bit (in_dim -> 2) layers, stacked
        # DCHMT's init: larger weights than PyTorch's default, so the choices start away from 1/2
        nn.init.kaiming_uniform_(self.fc.weight, mode="fan_out")
        nn.init.zeros_(self.fc.bias)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.fc(f).unflatten(1, (-1, 2)), dim=-1)  # (B, K, 2)


def select_to_code(p: torch.Tensor) -> torch.Tensor:
    """(B, K, 2) -> h = p_+ - p_- (B, K) in (-1, 1), whose sign is the selected bit."""
    return p[..., 1] - p[..., 0]


class DCHMT(_Rebuildable):
    """Per modality: trunk -> selecting hash layer. Outputs the selection probabilities too."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.cfg = cfg
        self.image_net = nn.Sequential(trunk(cfg.image_dim, cfg), SelectHash(cfg.hidden_dim, cfg.bits))
        self.text_net = nn.Sequential(trunk(cfg.text_dim, cfg), SelectHash(cfg.hidden_dim, cfg.bits))

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return select_to_code(self.image_net(x))

    def encode_text(self, x: torch.Tensor) -> torch.Tensor:
        return select_to_code(self.text_net(x))

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        p_image, p_text = self.image_net(image), self.text_net(text)
        return {"h_image": select_to_code(p_image), "h_text": select_to_code(p_text),
                "p_image": p_image, "p_text": p_text}

    @classmethod
    def build(cls, bits: int, cfg, data):
        model = cls(HeadConfig.for_data(bits, cfg, data))
        return model, StatelessObjective(dchmt_loss)


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


# --------------------------------------------------------------------------- DSPH

DSPH_ALPHA = 0.8  # weight of the irrelevant-pair regularisation (DSPH repo default)
DSPH_HASH_DROPOUT = 0.2  # dropout before tanh in DSPH's hash layer


def _griesmer_distance(bits: int, k: int) -> int:
    """Largest d allowed by the Griesmer bound sum_{i<k} ceil(d / 2^i) <= bits for a [bits, k] code."""
    d = 0
    while d < bits and sum(-(-(d + 1) // 2 ** i) for i in range(k)) <= bits:
        d += 1
    return d


# [n, k] cells of the usual bit grid where the Griesmer bound is not attained (Helleseth 1981):
# best binary linear code minimum distances from the code tables.
_BEST_KNOWN_DISTANCE = {(16, 6): 6, (32, 7): 14}


def proxy_threshold(bits: int, n_labels: int) -> float:
    """zeta of HyP^2 / DSPH: the cosine between the two nearest of 2^k well-spread K-bit codes,
    k = ceil(log2 C): zeta = 1 - 2 d / K, d the minimum distance of the best binary linear
    [K, k] code. DSPH reads it from a code table; here d comes from the Griesmer bound,
    corrected where the bound is not attained. For k <= log2 K + 1 (MIRFlickr, NUS-WIDE at
    16-64 bits, COCO at 64) d = K / 2 and zeta = 0."""
    k = max(1, math.ceil(math.log2(max(n_labels, 2))))
    d = _BEST_KNOWN_DISTANCE.get((bits, k), _griesmer_distance(bits, k))
    return 1 - 2 * d / bits


class TanhHash(nn.Module):
    """DSPH's hash layer: h = tanh(dropout(W f + b))."""

    def __init__(self, in_dim: int, bits: int):
        super().__init__()
        self.fc = nn.Linear(in_dim, bits)
        self.dropout = nn.Dropout(DSPH_HASH_DROPOUT)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dropout(self.fc(f)))  # (B, K)


class DSPH(_Rebuildable):
    """Per modality: trunk -> tanh hash layer; plus the learnable label proxies P (C, K), kept in
    the model so that the shared optimizer trains them (they are not needed for retrieval)."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.cfg = cfg
        self.image_net = nn.Sequential(trunk(cfg.image_dim, cfg), TanhHash(cfg.hidden_dim, cfg.bits))
        self.text_net = nn.Sequential(trunk(cfg.text_dim, cfg), TanhHash(cfg.hidden_dim, cfg.bits))
        self.proxies = nn.Parameter(torch.empty(cfg.n_labels, cfg.bits))
        nn.init.kaiming_normal_(self.proxies, mode="fan_out")  # as DSPH; only directions matter

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.image_net(x)

    def encode_text(self, x: torch.Tensor) -> torch.Tensor:
        return self.text_net(x)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"h_image": self.image_net(image), "h_text": self.text_net(text), "proxies": self.proxies}

    @classmethod
    def build(cls, bits: int, cfg, data):
        model = cls(HeadConfig.for_data(bits, cfg, data))
        threshold = proxy_threshold(bits, data.labels.shape[1])
        return model, StatelessObjective(lambda out, labels: dsph_loss(out, labels, threshold))


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.normalize(a, dim=1) @ F.normalize(b, dim=1).T


def dsph_proxy_term(h: torch.Tensor, proxies: torch.Tensor, labels: torch.Tensor, threshold: float):
    """sum_{y_ic=1} (1 - cos(h_i, p_c)) / |P| + sum_{y_ic=0} max(0, cos(h_i, p_c) - zeta) / |N|,
    |P|, |N| the numbers of positive and negative (sample, label) entries of the batch."""
    cos = _cosine(h, proxies)  # (B, C)
    y = labels.float()
    positive = (y * (1 - cos)).sum() / y.sum().clamp_min(1)
    negative = ((1 - y) * F.relu(cos - threshold)).sum() / (1 - y).sum().clamp_min(1)
    return positive + negative


def dsph_loss(out: dict[str, torch.Tensor], labels: torch.Tensor, threshold: float,
              alpha: float = DSPH_ALPHA) -> dict[str, torch.Tensor]:
    """DSPH (Huo et al. 2023), HyP^2's hybrid proxy-pair loss applied to both modalities:
    L = proxy(h_I) + proxy(h_T)
      + alpha * sum_{(a,b) in (I,I), (T,T), (I,T)} sum_{ij: s_ij=0} max(0, cos(a_i, b_j) - zeta) / |{s_ij=0}|
    where the irrelevant-pair term runs over the batch's samples with more than one label (as
    DSPH does: proxies alone cannot place multi-label samples), s_ij = l_i . l_j."""
    h_i, h_t = out["h_image"], out["h_text"]
    terms = {"proxy": dsph_proxy_term(h_i, out["proxies"], labels, threshold)
             + dsph_proxy_term(h_t, out["proxies"], labels, threshold)}
    multi = labels.sum(1) > 1
    irrelevant = (label_similarity(labels[multi], labels[multi]) == 0).float()  # (B', B')
    n_irrelevant = irrelevant.sum()
    if n_irrelevant > 0:
        a_i, a_t = h_i[multi], h_t[multi]
        terms["pair"] = alpha * sum((irrelevant * F.relu(_cosine(a, b) - threshold)).sum()
                                    for a, b in ((a_i, a_i), (a_t, a_t), (a_i, a_t))) / n_irrelevant
    else:
        terms["pair"] = h_i.new_zeros(())
    terms["total"] = terms["proxy"] + terms["pair"]
    return terms


# --------------------------------------------------------------------------- PCA-ITQ

ITQ_ITERATIONS = 50  # Gong & Lazebnik 2011


def itq_rotation(v: torch.Tensor, iterations: int, generator: torch.Generator):
    """ITQ (Gong & Lazebnik, CVPR 2011): min over B in {-1,1}^{n x K}, R orthogonal of ||B - V R||^2
    by alternation: B = sign(V R); with B^T V = S Omega S_hat^T (SVD), R = S_hat S^T.
    v (n, K) centred PCA projections. Returns R (K, K) and ||B - V R||^2 after each iteration,
    which never increases."""
    k = v.shape[1]
    rotation, _ = torch.linalg.qr(torch.randn(k, k, generator=generator, dtype=v.dtype))
    errors = []
    for _ in range(iterations):
        codes = torch.where(v @ rotation >= 0, 1.0, -1.0).to(v.dtype)  # (n, K)
        s, _, s_hat_t = torch.linalg.svd(codes.T @ v)
        rotation = s_hat_t.T @ s.T
        errors.append(float((codes - v @ rotation).pow(2).sum()))
    return rotation, errors


@dataclass
class ItqConfig:
    image_dim: int
    text_dim: int
    bits: int


class ITQ(_Rebuildable):
    """Unsupervised PCA-ITQ in CLIP's shared image-text space: x -> x / ||x|| - mu -> W (PCA) -> R.
    The projection is fitted once, on the training images and texts together; no parameters."""

    config_class = ItqConfig

    def __init__(self, cfg: ItqConfig):
        super().__init__()
        if cfg.image_dim != cfg.text_dim:
            raise ValueError(f"itq needs image and text features of one space, got {cfg.image_dim} "
                             f"and {cfg.text_dim} dimensions")
        self.cfg = cfg
        self.register_buffer("mean", torch.zeros(cfg.image_dim))  # (d,)
        self.register_buffer("projection", torch.zeros(cfg.image_dim, cfg.bits))  # W (d, K)
        self.register_buffer("rotation", torch.eye(cfg.bits))  # R (K, K)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        v = (F.normalize(x.float(), dim=1) - self.mean) @ self.projection @ self.rotation  # (B, K)
        return torch.tanh(v)  # the sign is the code; tanh only keeps h in (-1, 1)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self._project(x)

    def encode_text(self, x: torch.Tensor) -> torch.Tensor:
        return self._project(x)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"h_image": self._project(image), "h_text": self._project(text)}

    @torch.no_grad()
    def fit(self, image: torch.Tensor, text: torch.Tensor, seed: int, iterations: int = ITQ_ITERATIONS):
        """PCA of the L2-normalised, jointly centred training images and texts, then ITQ."""
        x = F.normalize(torch.cat([image, text]).double(), dim=1)  # (2n, d)
        mean = x.mean(0)
        x = x - mean
        if self.cfg.bits > x.shape[1]:
            raise ValueError(f"itq: {self.cfg.bits} bits need at least as many feature dimensions, "
                             f"got {x.shape[1]}")
        _, eigenvectors = torch.linalg.eigh(x.T @ x)  # ascending eigenvalues
        projection = eigenvectors[:, -self.cfg.bits:].flip(1)  # (d, K), largest variance first
        rotation, errors = itq_rotation(x @ projection, iterations, torch.Generator().manual_seed(seed))
        self.mean.copy_(mean)
        self.projection.copy_(projection)
        self.rotation.copy_(rotation)
        return errors

    @classmethod
    def build(cls, bits: int, cfg, data):
        model = cls(ItqConfig(image_dim=data.image.shape[1], text_dim=data.text.shape[1], bits=bits))
        model.fit(data.image, data.text, cfg.seed)
        return model, StatelessObjective(_closed_form_loss)


def _closed_form_loss(out, labels):
    raise RuntimeError("itq is fitted in closed form and has no training loss")


BASELINES = {"dchmt": DCHMT, "dsph": DSPH, "itq": ITQ}
CLIP_TEXT_ONLY = ("itq",)  # projects both modalities into one space: needs text: clip
