"""MITH (Liu et al., ACM MM 2023; authors' code DarrenZZhang/MM23-MITH): multi-granularity
interactive transformer hashing. Per modality, with D the width and K the bits:

    global concept learning (GCL, shared by both modalities): residual MLPs on the pooled
        feature f (B, D), then c = tanh(W f) (B, K), one "concept" per bit: the global code;
    localized token aggregation (LTA): each token joins the top-k concepts it scores positively
        on (its own GCL scores, no gradient); concept k is the softmax-weighted mean of the tokens
        that joined it (zero if none did) (B, K, D);
    local concept transforming (LCT): sinusoidal positions, a transformer over the K concept
        tokens, and bit k from concept token k alone: t (B, K), the local code;

    h = (c + t) / 2, whose sign is the retrieval code (theirs: sign(c + t)).

The loss, with S_ij = [l_i . l_j > 0] against the whole training set and C, T (N, K) the stored
global and local codes of every training row (each batch's rows replaced by its outputs, without
gradient, before the loss):

    L = intra   * [lik(T_I, t_I) + lik(T_T, t_T)]         token codes against the same modality's store
      + beta    * [lik(C_I, c_T) + lik(C_T, c_I)]         global codes against the other modality's store
      + gamma   * [||h_I - b||^2 + ||h_T - b||^2] / (B K)  b = sign(lambda (c_I + c_T) + (1 - lambda)(t_I + t_T))
      + delta   * [NCE(g_I, g_T) + alpha NCE_k(z_I, z_T)]  InfoNCE of the GCL features g (unit length) over
                                                           the batch, and of each sample's K concept tokens z
      + mu      * sum_m [||c_m' - t_m||^2 + 0.1 ||c_m - t_m'||^2] / B   ' : no gradient (distillation)

    lik(A, b) = mean_ij [log(1 + e^theta_ij) - S_ij theta_ij],  theta = 1/2 clamp(A b^T, -64, 64)

MITH reads CLIP's token sequences (49 image patches, 32 text positions); this project caches the
pooled embeddings only, so here the trunk's output is the pooled feature and the only token: LTA
then sets concept k to f where k is among f's top-k positive concepts and to zero elsewhere,
and the LCT transformer works on those K concept tokens as in the authors' model. The token path
is the same code (`MITH.branch` with `tokens`). A trunk (egath.methods.base.trunk) stands in for
the CLIP the authors fine-tune. Differences from the authors' code: docs/methods.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from egath.methods.base import (Method, Objective, Range, Rebuildable, bert_adam, label_similarity, trunk,
                                warmup_cosine)

TEACHER_SHARE = 0.1  # train_asym.py compute_loss: the distillation's gradient into the global code
LIKELIHOOD_CLAMP = 64.0  # train_asym.py bayesian_loss: A b^T clamped to +-64 before the 1/2
STORED = ("cls_image", "cls_text", "tokens_image", "tokens_text")  # outputs kept for every training row


@dataclass(frozen=True)
class MithParams:
    top_k: int = 8  # utils/get_args.py --top-k-label: concepts each token joins (LTA)
    transformer_layers: int = 2  # utils/get_args.py --transformer-layers (LCT)
    res_mlp_layers: int = 2  # utils/get_args.py --res-mlp-layers (GCL)
    intra_weight: float = 1.0  # utils/get_args.py --hyper-tokens-intra
    inter_weight: float = 10.0  # utils/get_args.py --hyper-cls-inter (beta)
    quantization_weight: float = 8.0  # utils/get_args.py --hyper-quan (gamma)
    contrastive_weight: float = 50.0  # utils/get_args.py --hyper-info-nce (delta)
    concept_contrastive_share: float = 0.01  # utils/get_args.py --hyper-alpha (alpha)
    distillation_weight: float = 1.0  # utils/get_args.py --hyper-distill (mu)
    code_share: float = 0.99  # utils/get_args.py --hyper-lambda (lambda): the global codes' share of B
    temperature: float = 0.07  # train_asym.py info_nce_loss, info_nce_loss_bmm
    warmup_proportion: float = 0.05  # utils/get_args.py --warmup-proportion

    def __post_init__(self):
        if self.top_k < 1 or self.transformer_layers < 1 or self.res_mlp_layers < 0:
            raise ValueError(f"mith: top_k and transformer_layers must be at least 1 and res_mlp_layers at "
                             f"least 0, got {self.top_k}, {self.transformer_layers}, {self.res_mlp_layers}")
        if not 0 <= self.code_share <= 1 or self.temperature <= 0:
            raise ValueError(f"mith: code_share must be in [0, 1] and temperature above 0, "
                             f"got {self.code_share}, {self.temperature}")


@dataclass
class MithConfig:
    image_dim: int  # CLIP image embedding size
    text_dim: int  # bag-of-words or CLIP text embedding size
    bits: int
    hidden_dim: int = 512  # the trunk's output and MITH's width (theirs: CLIP ViT-B/32's 512)
    dropout: float = 0.0  # trunk and GCL's residual MLPs
    top_k: int = 8
    transformer_layers: int = 2
    res_mlp_layers: int = 2


# --------------------------------------------------------------------------- the model


class ResidualMlps(nn.Module):
    """GCL's residual MLPs: x <- x + W2 drop(GELU(W1 LN(x))), widths D -> 4D -> D, `layers` times."""

    def __init__(self, width: int, layers: int, dropout: float):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 4 * width), nn.GELU(), nn.Dropout(dropout),
                          nn.Linear(4 * width, width))
            for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
        return x


class GlobalConceptLearning(nn.Module):
    """(..., D) -> (refined feature (..., D), concept scores tanh(W refined) (..., K)); W has no bias."""

    def __init__(self, width: int, bits: int, layers: int, dropout: float):
        super().__init__()
        self.mlp = ResidualMlps(width, layers, dropout)
        self.concepts = nn.Linear(width, bits, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        refined = self.mlp(x)
        return refined, torch.tanh(self.concepts(refined))


def aggregate_tokens(tokens: torch.Tensor, scores: torch.Tensor, top_k: int,
                     padding: torch.Tensor | None = None) -> torch.Tensor:
    """LTA: tokens (B, L, D) and their concept scores (B, L, K) -> concept tokens (B, K, D).
    Each token keeps its scores that are positive and among its top_k (ties at the k-th value kept,
    as theirs); concept k is sum_l softmax_l(kept scores) token_l over the tokens that kept it,
    and zero where none did. Padded tokens (padding True) take part in nothing. No gradient
    flows into the scores."""
    scores = scores.detach()
    kept = scores > 0
    if padding is not None:
        kept &= ~padding.unsqueeze(-1)
    masked = scores.masked_fill(~kept, -math.inf)
    kth = masked.topk(min(top_k, scores.shape[-1]), dim=-1).values[..., -1:]  # (B, L, 1)
    kept &= masked >= kth
    weights = torch.softmax(scores.masked_fill(~kept, -math.inf), dim=1)  # over the tokens
    weights = torch.nan_to_num(weights, nan=0.0)  # a concept no token kept
    return weights.transpose(1, 2) @ tokens


def sinusoid_positions(length: int, width: int) -> torch.Tensor:
    """(length, width): sin at even, cos at odd dimensions of position / 10000^(2i / width),
    divided by sqrt(width) (hash_model.py PositionalEncoding)."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    table = torch.zeros(length, width)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: width // 2])
    return table / math.sqrt(width)


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """CLIP's x sigmoid(1.702 x), in the transformer blocks MITH takes from CLIP; as silu, one
    kernel fewer on the CPU."""
    return F.silu(1.702 * x) / 1.702


def attention_heads(width: int) -> int:
    """CLIP's width // 64 heads (at least one), lowered until it divides the width."""
    heads = max(1, width // 64)
    while width % heads:
        heads -= 1
    return heads


class LocalConceptTransforming(nn.Module):
    """LCT: LTA, positions, a pre-norm transformer (CLIP's blocks) over the K concept tokens, and
    bit k = tanh(w_k . z_k + b_k) from concept token z_k alone (K separate Linear(D, 1))."""

    def __init__(self, width: int, bits: int, layers: int, top_k: int):
        super().__init__()
        self.top_k = top_k
        self.register_buffer("positions", sinusoid_positions(bits, width), persistent=False)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(width, attention_heads(width), 4 * width, dropout=0.0,
                                       activation=quick_gelu, batch_first=True, norm_first=True)
            for _ in range(layers))
        bound = 1 / math.sqrt(width)  # nn.Linear(width, 1)'s default init, per bit
        self.bit_weight = nn.Parameter(torch.empty(bits, width).uniform_(-bound, bound))
        self.bit_bias = nn.Parameter(torch.empty(bits).uniform_(-bound, bound))

    def forward(self, tokens, scores, padding=None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (local code (B, K), transformed concept tokens (B, K, D))."""
        z = aggregate_tokens(tokens, scores, self.top_k, padding) + self.positions
        for block in self.blocks:
            z = block(z)
        return torch.tanh((z * self.bit_weight).sum(-1) + self.bit_bias), z


class HashingHead(nn.Module):
    """Everything MITH trains besides CLIP: the shared GCL, an LCT and a concept projection per modality."""

    def __init__(self, cfg: MithConfig):
        super().__init__()
        width = cfg.hidden_dim
        self.gcl = GlobalConceptLearning(width, cfg.bits, cfg.res_mlp_layers, cfg.dropout)
        self.lct = nn.ModuleDict({m: LocalConceptTransforming(width, cfg.bits, cfg.transformer_layers, cfg.top_k)
                                  for m in ("image", "text")})
        self.concept_proj = nn.ModuleDict({m: nn.Linear(width, width) for m in ("image", "text")})


class MITH(Rebuildable):
    """Per modality a trunk (the pooled feature f), then the hashing head; `branch` gives one
    modality's outputs, `forward` both, keyed by modality."""
    config_class = MithConfig

    def __init__(self, cfg: MithConfig):
        super().__init__()
        self.cfg = cfg
        self.trunks = nn.ModuleDict({"image": trunk(cfg.image_dim, cfg), "text": trunk(cfg.text_dim, cfg)})
        self.hashing = HashingHead(cfg)

    def branch(self, modality: str, pooled: torch.Tensor, tokens: torch.Tensor | None = None,
               padding: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """pooled (B, d) -> h (B, K) and what the loss reads. Without `tokens` (B, L, d) the pooled
        feature is the only token, and its concept scores are its global code."""
        trunk_, head = self.trunks[modality], self.hashing
        f = trunk_(pooled)
        refined, cls = head.gcl(f)
        if tokens is None:
            local, scores = f.unsqueeze(1), cls.unsqueeze(1)
        else:
            local = trunk_(tokens)
            scores = head.gcl(local)[1]
        token_code, concepts = head.lct[modality](local, scores, padding)
        return {"h": 0.5 * (cls + token_code), "cls": cls, "tokens": token_code,
                "global": F.normalize(refined, dim=-1),
                "concepts": F.normalize(head.concept_proj[modality](concepts), dim=-1)}

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch("image", x)["h"]

    def encode_text(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch("text", x)["h"]

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        return merge_branches(self.branch("image", image), self.branch("text", text))


def merge_branches(image: dict, text: dict) -> dict[str, torch.Tensor]:
    """The two modalities' outputs as one dict: h_image, cls_image, ..., h_text, ..."""
    return {f"{key}_{modality}": value for modality, out in (("image", image), ("text", text))
            for key, value in out.items()}


# --------------------------------------------------------------------------- the loss


def likelihood(stored: torch.Tensor, h: torch.Tensor, similarity: torch.Tensor) -> torch.Tensor:
    """Mean over (N, B) of log(1 + e^theta) - S theta, theta = 1/2 clamp(stored h^T, +-64)."""
    theta = 0.5 * (stored @ h.T).clamp(-LIKELIHOOD_CLAMP, LIKELIHOOD_CLAMP)
    return (F.softplus(theta) - similarity * theta).mean()


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE of matched rows of a, b (B, D): the mean of both directions' cross-entropy."""
    logits = a @ b.T / temperature
    target = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def concept_info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE within each sample between its K image and K text concept tokens (B, K, D):
    concept k of one modality against the K of the other, the mean over all B K rows, both ways."""
    logits = a @ b.transpose(1, 2) / temperature  # (B, K, K)
    target = torch.arange(a.shape[1], device=a.device).repeat(a.shape[0])
    return 0.5 * (F.cross_entropy(logits.flatten(0, 1), target)
                  + F.cross_entropy(logits.transpose(1, 2).flatten(0, 1), target))


def distillation(cls: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """sum ||c' - t||^2 + 0.1 sum ||c - t'||^2 (' : no gradient), each summed over the batch: the
    local code learns from the global one, which learns back at a tenth; not divided by B here."""
    return (cls.detach() - tokens).pow(2).sum() + TEACHER_SHARE * (cls - tokens.detach()).pow(2).sum()


def mith_loss(out: dict, stored: dict, similarity: torch.Tensor, params: MithParams) -> dict[str, torch.Tensor]:
    """Named terms (unweighted) and their weighted "total" (module docstring). `stored`: the four
    (N, K) stores of cls_image, cls_text, tokens_image, tokens_text; `similarity` (N, B)."""
    n_batch, bits = out["h_image"].shape
    lam = params.code_share
    codes = torch.sign(lam * (out["cls_image"] + out["cls_text"])
                       + (1 - lam) * (out["tokens_image"] + out["tokens_text"])).detach()
    terms = {
        "intra": likelihood(stored["tokens_image"], out["tokens_image"], similarity)
        + likelihood(stored["tokens_text"], out["tokens_text"], similarity),
        "inter": likelihood(stored["cls_image"], out["cls_text"], similarity)
        + likelihood(stored["cls_text"], out["cls_image"], similarity),
        "quantization": ((out["h_image"] - codes).pow(2).sum() + (out["h_text"] - codes).pow(2).sum())
        / (n_batch * bits),
        "global_contrastive": info_nce(out["global_image"], out["global_text"], params.temperature),
        "concept_contrastive": concept_info_nce(out["concepts_image"], out["concepts_text"], params.temperature),
        "distillation": (distillation(out["cls_image"], out["tokens_image"])
                         + distillation(out["cls_text"], out["tokens_text"])) / n_batch,
    }
    terms["total"] = (params.intra_weight * terms["intra"] + params.inter_weight * terms["inter"]
                      + params.quantization_weight * terms["quantization"]
                      + params.contrastive_weight * (terms["global_contrastive"]
                                                     + params.concept_contrastive_share * terms["concept_contrastive"])
                      + params.distillation_weight * terms["distillation"])
    return terms


class MithObjective(Objective):
    """The stored global and local codes of every training row, drawn N(0, 1) at the start (as
    theirs) and overwritten by each batch's outputs before its loss."""

    def __init__(self, labels: torch.Tensor, bits: int, params: MithParams, seed: int):
        self.labels = labels  # (N, C), the training rows
        self.params = params
        generator = torch.Generator().manual_seed(seed)  # drawn on the CPU: the same on any device
        self.stored = {name: torch.randn(len(labels), bits, generator=generator).to(labels.device)
                       for name in STORED}

    def loss(self, out: dict, labels: torch.Tensor, index: torch.Tensor) -> dict:
        for name in STORED:
            self.stored[name][index] = out[name].detach()
        return mith_loss(out, self.stored, label_similarity(self.labels, labels), self.params)

    def state_dict(self) -> dict:
        return dict(self.stored)

    def load_state_dict(self, state: dict) -> None:
        self.stored = {name: state[name] for name in STORED}


# --------------------------------------------------------------------------- method


def build(bits: int, cfg, params: MithParams, data, graph):
    model_cfg = MithConfig(image_dim=data.image.shape[-1], text_dim=data.text.shape[-1], bits=bits,
                           hidden_dim=cfg.feature_dim, dropout=cfg.dropout, top_k=params.top_k,
                           transformer_layers=params.transformer_layers, res_mlp_layers=params.res_mlp_layers)
    return MITH(model_cfg), MithObjective(data.labels, bits, params, cfg.seed)


def optimizers(model: MITH, cfg, params: MithParams) -> list[torch.optim.Optimizer]:
    """train_asym.py: one BertAdam over two groups, CLIP at --clip-lr 2e-6 and the hashing model at
    --lr 1e-3, weight decay 0.01. The trunks stand in for CLIP, new rather than pretrained: they
    learn at the hashing model's rate, as for DCHMT and DSPH."""
    return [bert_adam([{"params": model.trunks.parameters()}, {"params": model.hashing.parameters()}], cfg)]


METHOD = Method(
    name="mith", kind="supervised", source="DarrenZZhang/MM23-MITH",
    summary="global concept codes (shared residual MLPs) and local codes from a transformer over top-k "
            "aggregated concept tokens; likelihood against stored codes, quantization, InfoNCE and "
            "local-from-global distillation",
    build=build, from_checkpoint=MITH.from_checkpoint, params=MithParams, optimizers=optimizers,
    lr_scale=warmup_cosine,
    training_defaults={
        "lr": 1e-3, "weight_decay": 0.01,  # utils/get_args.py --lr, --weight-decay
        "batch_size": 128, "dropout": 0.0,  # utils/get_args.py --batch-size, --dropout
        "feature_dim": 512,  # hash_model.py: MITH's width is CLIP's embed_dim, 512 for ViT-B/32
    },
    tuning_space={"lr": Range(1e-4, 1e-2), "inter_weight": Range(1.0, 100.0),
                  "quantization_weight": Range(0.8, 80.0)})
