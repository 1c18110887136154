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
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch_geometric.nn import GATConv


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


def build_model(cfg: ModelConfig, adjacency, node_features) -> EGATH:
    return EGATH(cfg, torch.as_tensor(adjacency), torch.as_tensor(node_features))


def egath_from_checkpoint(ckpt: dict) -> EGATH:
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
