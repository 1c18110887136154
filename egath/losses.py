"""EGATH's objective: NDCG-weighted cosine triplet, quantization, label classification, and the
once-per-epoch discrete update of the per-sample code matrix B (GCDH, adopted by the paper).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


def ndcg_weights(similarity: torch.Tensor) -> torch.Tensor:
    """w_ij = (2^s_ij - 1) / Z_i, Z_i the ideal DCG of row i: sum_r (2^s_(r) - 1) / log2(r + 2)
    over the row sorted in decreasing order. s_ij = l_i . l_j counts shared labels."""
    gains = torch.exp2(similarity) - 1  # (B, M)
    ideal = torch.sort(gains, dim=1, descending=True).values
    discounts = torch.log2(torch.arange(similarity.shape[1], device=similarity.device) + 2.0)
    z = (ideal / discounts).sum(dim=1, keepdim=True)
    return gains / z.clamp_min(1e-12)


def weighted_triplet_loss(anchor: torch.Tensor, target: torch.Tensor, anchor_labels: torch.Tensor,
                          target_labels: torch.Tensor, margin: float) -> torch.Tensor:
    """sum over triplets (i, j, k), j relevant to i and k not, of
    w_ij * max(0, d_ij - d_ik + margin), d = 1 - cos (paper's cosine triplet, GCDH's weights)."""
    distance = (1 - F.cosine_similarity(anchor.unsqueeze(1), target.unsqueeze(0), dim=-1)).clamp_min(0)  # (B, M)
    similarity = anchor_labels.float() @ target_labels.float().T  # (B, M)
    relevant = (similarity > 0).float()
    weight = ndcg_weights(similarity)
    triplet_mask = relevant.unsqueeze(2) * (1 - relevant.unsqueeze(1))  # (B, M, M): j relevant, k not
    hinge = F.relu(distance.unsqueeze(2) - distance.unsqueeze(1) + margin)  # (B, M, M)
    return (weight.unsqueeze(2) * triplet_mask * hinge).sum()


def quantization_loss(h: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """||B - h||^2 over the batch (sum, as GCDH)."""
    return (codes - h).pow(2).sum()


def egath_loss(out: dict[str, torch.Tensor], labels: torch.Tensor, codes: torch.Tensor,
               margin: float, triplet_weight: float, quantization_weight: float,
               classification_weight: float, use_triplet: bool = True) -> dict[str, torch.Tensor]:
    """Named loss terms and their weighted total:
    alpha (tri_I + tri_T) + beta (||B - h_I||^2 + ||B - h_T||^2) + eta BCE(S, L)."""
    h_i, h_t = out["h_image"], out["h_text"]
    terms = {}
    if use_triplet:
        # four pairings: I->T, I->I (image anchors) and T->I, T->T (text anchors)
        terms["triplet"] = sum(weighted_triplet_loss(a, t, labels, labels, margin)
                               for a, t in ((h_i, h_t), (h_i, h_i), (h_t, h_i), (h_t, h_t)))
    terms["quantization"] = quantization_loss(h_i, codes) + quantization_loss(h_t, codes)
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


def binarize(x: torch.Tensor) -> torch.Tensor:
    """sign with sign(0) = +1, so codes are always in {-1, +1}."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def orthonormal_projection(m: torch.Tensor) -> torch.Tensor:
    """The matrix with orthonormal columns nearest to m (Frobenius): U V^T from the thin SVD."""
    u, _, vh = torch.linalg.svd(m, full_matrices=False)
    return u @ vh


def update_codes(state: CodeState, labels: torch.Tensor, h_image: torch.Tensor, h_text: torch.Tensor,
                 lam: float, mu: float, rho: float) -> CodeState:
    """One discrete step (GCDH eq.):
    R = (L^T L + lam I)^-1 L^T B;  B = sign(L R + gamma (C - D / gamma) + mu (H_I + H_T));
    C = proj(B + D / gamma);  D = D + gamma (B - C);  gamma = rho gamma."""
    L = labels.float()
    eye = torch.eye(L.shape[1], dtype=L.dtype, device=L.device)
    R = torch.linalg.solve(L.T @ L + lam * eye, L.T @ state.codes)  # (C, K)
    codes = binarize(L @ R + state.gamma * state.auxiliary - state.multiplier + mu * (h_image + h_text))
    auxiliary = orthonormal_projection(codes + state.multiplier / state.gamma)
    multiplier = state.multiplier + state.gamma * (codes - auxiliary)
    return CodeState(codes, auxiliary, multiplier, state.gamma * rho)


class EgathObjective:
    """EGATH's loss of a batch, and the discrete update of B at the end of each epoch."""

    def __init__(self, cfg, labels: torch.Tensor, bits: int, use_triplet: bool = True):
        self.cfg = cfg  # egath.training.TrainConfig
        self.labels = labels  # (N, C) of the whole training set, for the B update
        self.use_triplet = use_triplet
        state = CodeState.initial(labels.shape[0], bits, cfg.code_gamma,
                                  torch.Generator().manual_seed(cfg.seed))  # drawn on the CPU: same B on any device
        self.state = CodeState(state.codes.to(labels.device), state.auxiliary.to(labels.device),
                               state.multiplier.to(labels.device), state.gamma)

    def loss(self, out: dict[str, torch.Tensor], labels: torch.Tensor, batch: torch.Tensor) -> dict:
        cfg = self.cfg
        return egath_loss(out, labels, self.state.codes[batch], cfg.margin, cfg.triplet_weight, cfg.quantization_weight,
                          cfg.classification_weight, self.use_triplet)

    def end_epoch(self, h_image: torch.Tensor, h_text: torch.Tensor) -> None:
        cfg = self.cfg
        self.state = update_codes(self.state, self.labels, h_image, h_text,
                                  cfg.code_lambda, cfg.code_mu, cfg.code_rho)

    def state_dict(self) -> dict:
        return asdict(self.state)

    def load_state_dict(self, state: dict) -> None:
        self.state = CodeState(**state)
