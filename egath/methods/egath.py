"""EGATH: two modality encoders, a GAT label classifier over the label graph, and tanh hash heads.

Read against the paper (Jin et al., NeurIPS 2024), section 3:
- image branch: f_I (cached CLIP embedding) -> linear expansion -> transformer encoder layer
  (single-head self-attention + feed-forward) -> linear -> F_I;
- text branch: bag-of-words -> linear -> transformer encoder layer -> fully connected -> F_T;
- GAT classifier: two attention layers over the thresholded co-occurrence graph turn the
  label-name embeddings g into label prototypes P (C, 2F); label scores S = [F_I || F_T] P^T
  (GCDH's fusion; the paper does not say how the scores reach the hash layer);
- hash layer: h = tanh(W F + b) while training, sign(h) for retrieval.
Each feature vector is one token, so self-attention has a single key and reduces to its value
and output projections; the layer is kept so that the parameterisation matches the paper.

The objective: NDCG-weighted cosine triplet, quantization, label classification, and the
once-per-epoch discrete update of the per-sample code matrix B (GCDH, adopted by the paper).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from egath.methods.base import Method, Objective, Range, binarize


# --------------------------------------------------------------------------- model


@dataclass
class ModelConfig:
    image_dim: int  # CLIP embedding size of the cached image features
    text_dim: int  # bag-of-words vocabulary size
    n_labels: int
    node_dim: int  # label-name embedding size (300 for GloVe)
    bits: int
    d_model: int = 512  # transformer width after the expansion
    ff_dim: int = 2048  # transformer feed-forward width
    feature_dim: int = 512  # F_I, F_T
    gat_hidden: int = 1024  # first GAT layer width (paper: 300 -> 1024 -> hidden)
    leaky_slope: float = 0.2  # LeakyReLU between the GAT layers (paper)
    dropout: float = 0.1
    use_gat: bool = True  # False: the EGATH-G ablation


class ModalityEncoder(nn.Module):
    """input (B, in_dim) -> expansion -> transformer encoder layer -> linear -> F (B, feature_dim)."""

    def __init__(self, in_dim: int, cfg: ModelConfig):
        super().__init__()
        self.expand = nn.Linear(in_dim, cfg.d_model)
        self.transformer = nn.TransformerEncoderLayer(
            cfg.d_model, nhead=1, dim_feedforward=cfg.ff_dim, dropout=cfg.dropout, batch_first=True)
        self.out = nn.Linear(cfg.d_model, cfg.feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.expand(x).unsqueeze(1)  # (B, 1, d_model)
        return self.out(self.transformer(tokens).squeeze(1))  # (B, feature_dim)


class GATLabelClassifier(nn.Module):
    """Two GAT layers over the label graph; scores = fused features @ prototypes^T."""

    def __init__(self, cfg: ModelConfig, edge_index: torch.Tensor, node_features: torch.Tensor):
        super().__init__()
        # imported here: torch_geometric takes about 1.9 s to import, and the methods that share this
        # module's losses and code update without a GAT (egath-g, gcdh) do not need it
        from torch_geometric.nn import GATConv

        # alpha_ij = softmax_j LeakyReLU(a^T [W g_i || W g_j]) over j with A_ij = 1 (self-loops are in A)
        self.gat1 = GATConv(cfg.node_dim, cfg.gat_hidden, heads=1, add_self_loops=False)
        self.gat2 = GATConv(cfg.gat_hidden, 2 * cfg.feature_dim, heads=1, add_self_loops=False)
        self.act = nn.LeakyReLU(cfg.leaky_slope)
        self.register_buffer("edge_index", edge_index)
        self.register_buffer("node_features", node_features)

    def prototypes(self) -> torch.Tensor:
        h = self.act(self.gat1(self.node_features, self.edge_index))  # (C, gat_hidden)
        return self.gat2(h, self.edge_index)  # (C, 2F)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return fused @ self.prototypes().T  # (B, C)


class EGATH(nn.Module):
    def __init__(self, cfg: ModelConfig, adjacency: torch.Tensor, node_features: torch.Tensor):
        super().__init__()
        self.cfg = cfg
        self.image_encoder = ModalityEncoder(cfg.image_dim, cfg)
        self.text_encoder = ModalityEncoder(cfg.text_dim, cfg)
        self.image_hash = nn.Linear(cfg.feature_dim, cfg.bits)
        self.text_hash = nn.Linear(cfg.feature_dim, cfg.bits)
        if cfg.use_gat:
            edge_index = adjacency.nonzero().T.contiguous()  # (2, E): source j -> target i
            self.classifier = GATLabelClassifier(cfg, edge_index.flip(0), node_features.float())
        else:
            self.classifier = None

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.image_hash(self.image_encoder(x)))  # (B, K) in (-1, 1)

    def encode_text(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.text_hash(self.text_encoder(x)))  # (B, K)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        f_image, f_text = self.image_encoder(image), self.text_encoder(text)
        out = {"h_image": torch.tanh(self.image_hash(f_image)),
               "h_text": torch.tanh(self.text_hash(f_text))}
        if self.classifier is not None:
            out["label_logits"] = self.classifier(torch.cat([f_image, f_text], dim=1))
        return out



# --------------------------------------------------------------------------- objective


def ndcg_weights(similarity: torch.Tensor) -> torch.Tensor:
    """w_ij = (2^s_ij - 1) / Z_i, Z_i the ideal DCG of row i: sum_r (2^s_(r) - 1) / log2(r + 2)
    over the row sorted in decreasing order. s_ij = l_i . l_j counts shared labels."""
    gains = torch.exp2(similarity) - 1  # (B, M)
    ideal = torch.sort(gains, dim=1, descending=True).values
    discounts = torch.log2(torch.arange(similarity.shape[1], device=similarity.device, dtype=gains.dtype) + 2.0)
    z = (ideal / discounts).sum(dim=1, keepdim=True)
    return gains / z.clamp_min(1e-12)


LOSS_REDUCTIONS = ("mean", "sum")  # TrainConfig.loss_reduction


def weighted_triplet_loss(anchor: torch.Tensor, target: torch.Tensor, anchor_labels: torch.Tensor,
                          target_labels: torch.Tensor, margin: float, reduction: str = "sum") -> torch.Tensor:
    """Over triplets (i, j, k), j relevant to i and k not, of w_ij * max(0, d_ij - d_ik + margin),
    d = 1 - cos (paper's cosine triplet, GCDH's weights):
    sum   the sum over all triplets (GCDH);
    mean  per anchor, sum_j w_ij * (mean over its k), averaged over the anchors: the size of one
          anchor's hinge, whatever the batch size (w_ij, NDCG gains over the ideal DCG, are
          normalised per anchor already)."""
    distance = (1 - F.cosine_similarity(anchor.unsqueeze(1), target.unsqueeze(0), dim=-1)).clamp_min(0)  # (B, M)
    similarity = anchor_labels.float() @ target_labels.float().T  # (B, M)
    weight = ndcg_weights(similarity)  # 0 where j is not relevant to i (gain 2^0 - 1)
    irrelevant = (similarity == 0).to(distance.dtype)  # (B, M): k not relevant to i
    hinge = F.relu(distance.unsqueeze(2) - distance.unsqueeze(1) + margin)  # (B, M, M): [i, j, k]
    # one (B, M, M) product instead of four: the weight masks j, the irrelevance k
    per_anchor_j = (hinge * irrelevant.unsqueeze(1)).sum(2)  # (B, M): summed over k
    if reduction == "sum":
        return (per_anchor_j * weight).sum()
    n_irrelevant = irrelevant.sum(1, keepdim=True).clamp_min(1)  # (B, 1)
    return (per_anchor_j / n_irrelevant * weight).sum(1).mean()


def quantization_loss(h: torch.Tensor, codes: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """||B - h||^2 over the batch (sum, as GCDH), or its mean per sample and bit (mean)."""
    squared = (codes - h).pow(2)
    return squared.sum() if reduction == "sum" else squared.mean()


def egath_loss(out: dict[str, torch.Tensor], labels: torch.Tensor, codes: torch.Tensor,
               margin: float, triplet_weight: float, quantization_weight: float,
               classification_weight: float, use_triplet: bool = True,
               reduction: str = "sum") -> dict[str, torch.Tensor]:
    """Named loss terms and their weighted total:
    alpha (tri_I + tri_T) + beta (||B - h_I||^2 + ||B - h_T||^2) + eta BCE(S, L).

    `reduction` sum: GCDH's, sums over triplets and over the batch's codes, the BCE a mean, so
    the BCE's share of the objective shrinks with the batch and the code length (about 1e-6 at
    batch 64); mean: every term per sample (per anchor, per sample and bit, per sample and
    label), so that the weights mean the same at any batch size and code length."""
    if reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"loss_reduction must be one of {LOSS_REDUCTIONS}, got {reduction!r}")
    h_i, h_t = out["h_image"], out["h_text"]
    terms = {}
    if use_triplet:
        # four pairings: I->T, I->I (image anchors) and T->I, T->T (text anchors)
        terms["triplet"] = sum(weighted_triplet_loss(a, t, labels, labels, margin, reduction)
                               for a, t in ((h_i, h_t), (h_i, h_i), (h_t, h_i), (h_t, h_t)))
    terms["quantization"] = quantization_loss(h_i, codes, reduction) + quantization_loss(h_t, codes, reduction)
    if "label_logits" in out:
        terms["classification"] = F.binary_cross_entropy_with_logits(out["label_logits"], labels.float())
    weights = {"triplet": triplet_weight, "quantization": quantization_weight,
               "classification": classification_weight}
    terms["total"] = sum(weights[name] * value for name, value in terms.items())
    return terms


@dataclass
class CodeState:
    """The discrete variables of the objective, kept for the whole training set."""
    codes: torch.Tensor  # B (N, K) in {-1, +1}
    auxiliary: torch.Tensor  # C (N, K), orthonormal columns (decorrelated, balanced codes)
    multiplier: torch.Tensor  # D (N, K), Lagrange multiplier of B = C
    gamma: float  # penalty weight, grows by rho each update

    @classmethod
    def initial(cls, n: int, bits: int, gamma: float, generator: torch.Generator) -> "CodeState":
        codes = binarize(torch.randn(n, bits, generator=generator))
        return cls(codes, codes.clone(), torch.zeros(n, bits), gamma)


def orthonormal_projection(m: torch.Tensor) -> torch.Tensor:
    """The matrix with orthonormal columns nearest to m (Frobenius): U V^T from the thin SVD."""
    u, _, vh = torch.linalg.svd(m, full_matrices=False)
    return u @ vh


def update_codes(state: CodeState, labels: torch.Tensor, h_image: torch.Tensor, h_text: torch.Tensor,
                 lam: float, mu: float, rho: float, variant: str = "gcdh", pull: float = 0.5) -> CodeState:
    """One discrete step. Every variant first fits R = (L^T L + lam I)^-1 L^T B and forms the
    data term M = L R + mu (H_I + H_T), then:

    relative (the default):
        B = sign(M + pull rms(M) C);  C = sqrt(N) proj(B);  D = 0, gamma unused.
      C is the decorrelated, balanced matrix nearest B on B's scale ({C^T C = N I}, entries of
      rms 1), and its pull is a fixed share of the data term's size: it decides the bits where
      |M| < pull rms(M), whatever the scale of M, and every term stays bounded.
    penalty:
        B = sign(M + gamma C);  C = sqrt(N) proj(B);  D = 0, gamma fixed.
      The same C with GCDH's gamma_0 = 0.01 as its weight: against an M of size ~1 it decides a
      fraction of a percent of the bits, so in effect B = sign(M).
    gcdh (GCDH's algebra, exactly):
        B = sign(M + gamma (C - D / gamma));  C = proj(B + D / gamma);
        D = D + gamma (B - C);  gamma = rho gamma.
      C has orthonormal columns (entries ~ 1/sqrt(N)) while B is +-1, so B = C never holds and
      D grows by about gamma B every epoch while gamma grows: the update does not settle.
    """
    L = labels.float()
    eye = torch.eye(L.shape[1], dtype=L.dtype, device=L.device)
    R = torch.linalg.solve(L.T @ L + lam * eye, L.T @ state.codes)  # (C, K)
    data_term = L @ R + mu * (h_image + h_text)  # (N, K)
    if variant == "gcdh":
        codes = binarize(data_term + state.gamma * state.auxiliary - state.multiplier)
        auxiliary = orthonormal_projection(codes + state.multiplier / state.gamma)
        multiplier = state.multiplier + state.gamma * (codes - auxiliary)
        return CodeState(codes, auxiliary, multiplier, state.gamma * rho)
    if variant in ("relative", "penalty"):
        weight = pull * data_term.pow(2).mean().sqrt() if variant == "relative" else state.gamma
        codes = binarize(data_term + weight * state.auxiliary)
        auxiliary = orthonormal_projection(codes) * codes.shape[0] ** 0.5
        return CodeState(codes, auxiliary, state.multiplier, state.gamma)
    raise ValueError(f"code_update must be relative, penalty or gcdh, got {variant!r}")


class EgathObjective(Objective):
    """EGATH's loss of a batch, and the discrete update of B at the end of each epoch."""

    def __init__(self, cfg, labels: torch.Tensor, bits: int, use_triplet: bool = True):
        self.cfg = cfg  # egath.training.TrainConfig
        self.labels = labels  # (N, C) of the whole training set, for the B update
        self.use_triplet = use_triplet
        state = CodeState.initial(labels.shape[0], bits, cfg.code_gamma,
                                  torch.Generator().manual_seed(cfg.seed))  # drawn on the CPU: same B on any device
        self.state = CodeState(state.codes.to(labels.device), state.auxiliary.to(labels.device),
                               state.multiplier.to(labels.device), state.gamma)

    def loss(self, out: dict[str, torch.Tensor], labels: torch.Tensor, index: torch.Tensor) -> dict:
        cfg = self.cfg
        return egath_loss(out, labels, self.state.codes[index], cfg.margin, cfg.triplet_weight,
                          cfg.quantization_weight, cfg.classification_weight, self.use_triplet,
                          cfg.loss_reduction)

    def end_epoch(self, h_image: torch.Tensor, h_text: torch.Tensor) -> dict:
        cfg = self.cfg
        before = self.state.codes
        self.state = update_codes(self.state, self.labels, h_image, h_text, cfg.code_lambda,
                                  cfg.code_mu, cfg.code_rho, cfg.code_update, cfg.code_pull)
        # how much B moved, and the multiplier's size: both settle when the update is stable
        return {"code_flip_rate": (self.state.codes != before).float().mean(),
                "multiplier_rms": self.state.multiplier.pow(2).mean().sqrt()}

    def protocol(self) -> dict:
        return {"code_update": self.cfg.code_update, "loss_reduction": self.cfg.loss_reduction}

    def state_dict(self) -> dict:
        return asdict(self.state)

    def load_state_dict(self, state: dict) -> None:
        self.state = CodeState(**state)


# --------------------------------------------------------------------------- the method


def build_model(cfg: ModelConfig, adjacency, node_features) -> EGATH:
    return EGATH(cfg, torch.as_tensor(adjacency), torch.as_tensor(node_features))


def from_checkpoint(ckpt: dict) -> EGATH:
    """Rebuild a trained model from its checkpoint alone (config, weights, graph buffers)."""
    cfg = ModelConfig(**ckpt["model_config"])
    state_dict = ckpt["state_dict"]
    adjacency = torch.zeros(cfg.n_labels, cfg.n_labels)
    if cfg.use_gat:
        source, target = state_dict["classifier.edge_index"]
        adjacency[target, source] = 1
    model = build_model(cfg, adjacency, torch.zeros(cfg.n_labels, cfg.node_dim))
    model.load_state_dict(state_dict)
    return model


def builder(use_gat: bool, use_triplet: bool):
    """build() of EGATH or one of the paper's ablations (Table 3)."""

    def build(bits: int, cfg, params, data, graph):
        model_cfg = ModelConfig(
            image_dim=data.image.shape[1], text_dim=data.text.shape[1], n_labels=data.labels.shape[1],
            node_dim=graph.node_features.shape[1], bits=bits, d_model=cfg.d_model, ff_dim=cfg.ff_dim,
            feature_dim=cfg.feature_dim, gat_hidden=cfg.gat_hidden, dropout=cfg.dropout, use_gat=use_gat)
        model = build_model(model_cfg, graph.adjacency, graph.node_features)
        return model, EgathObjective(cfg, data.labels, bits, use_triplet=use_triplet)

    return build


# EGATH's settings are TrainConfig's defaults: the paper's, GCDH's where the paper is silent, and
# this project's per-sample loss terms (loss_reduction mean; docs/methods.md)
_LR = Range(1e-5, 1e-2)
_LOSS = "alpha (NDCG-weighted cosine triplet I-T, I-I, T-I, T-T) + ||B - h||^2 + eta BCE of the GAT label scores"
EGATH_METHOD = Method(
    name="egath", kind="supervised", source="the paper; losses and B update from Zjut-MultimediaPlus/GCDH",
    summary=f"transformer branches, GAT label classifier, tanh hash layers; {_LOSS}; discrete B update",
    build=builder(use_gat=True, use_triplet=True), from_checkpoint=from_checkpoint,
    tuning_space={"lr": _LR, "triplet_weight": Range(1.0, 100.0), "classification_weight": Range(0.01, 10.0)})
EGATH_G = Method(
    name="egath-g", kind="supervised", source=EGATH_METHOD.source,
    summary="EGATH without the GAT classifier (the paper's ablation): no BCE term",
    build=builder(use_gat=False, use_triplet=True), from_checkpoint=from_checkpoint,
    tuning_space={"lr": _LR, "triplet_weight": Range(1.0, 100.0)})
EGATH_T = Method(
    name="egath-t", kind="supervised", source=EGATH_METHOD.source,
    summary="EGATH without the cosine triplet loss (the paper's ablation)",
    build=builder(use_gat=True, use_triplet=False), from_checkpoint=from_checkpoint,
    tuning_space={"lr": _LR, "classification_weight": Range(0.01, 10.0)})
