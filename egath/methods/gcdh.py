"""GCDH (Zjut-MultimediaPlus/GCDH, TNNLS), the method EGATH builds on: a two-layer GCN over the
label graph turns label-name embeddings into label prototypes that score the fused image and
text features, with EGATH's losses and discrete code update (egath.methods.egath):

    alpha (NDCG-weighted cosine triplet I-T, I-I, T-I, T-T) + ||B - h_I||^2 + ||B - h_T||^2
    + BCE([F_I || F_T] P^T, L),   P = GCN(node features, normalised adjacency)   (C, 2F)

and once per epoch B, C, D from the labels and the outputs (egath.methods.egath.update_codes).

On our frozen cached features:
- image: a trunk (egath.methods.base.trunk, width F = feature_dim) stands in for the ResNet-50
  GCDH fine-tunes (models/img_model.py); its output F_I is the 2048-d pooled feature there;
- text: GCDH's own MLP on the bag-of-words (models/txt_model.py TXT): three Linear + BatchNorm +
  ReLU layers of widths 4F, 2F, F (8192, 4096, 2048 at GCDH's F = 2048);
- hash layers: Linear + tanh per modality, kaiming-normal weights and zero biases as GCDH.
Differences from the authors' code: docs/methods.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from egath.methods.base import Method, Range, Rebuildable, trunk
from egath.methods.egath import EgathObjective


@dataclass(frozen=True)
class GcdhParams:
    adjacency_reweight: float = 0.25  # models/gcn.py gen_A: each edge weighs p / (column degree), plus I


@dataclass
class GcdhConfig:
    image_dim: int  # CLIP image embedding size
    text_dim: int  # bag-of-words or CLIP text embedding size
    n_labels: int
    node_dim: int  # label-name embedding size (GloVe: 300)
    bits: int
    hidden_dim: int = 2048  # F: F_I, F_T and the trunk width (config.py hidden_dim)
    gcn_hidden: int = 1024  # first GCN layer (models/gcn.py gc1)
    dropout: float = 0.0  # in the trunk; GCDH runs without dropout (config.py dropout = False)


def normalised_adjacency(adjacency: torch.Tensor, reweight: float) -> torch.Tensor:
    """GCDH's propagation matrix from the thresholded co-occurrence graph A (C, C), A_ij = 1 if
    P(j | i) >= threshold (self-loops included):
        A' = p A / (column sums of A) + I,   D = diag(row sums of A'),   adj = D^-1/2 A'^T D^-1/2."""
    a = adjacency.double()
    a = a * reweight / (a.sum(0, keepdim=True) + 1e-6) + torch.eye(a.shape[0], dtype=a.dtype)
    d = a.sum(1).pow(-0.5)
    return (d[:, None] * a.T * d[None, :]).float()


def graph_convolution(in_dim: int, out_dim: int) -> nn.Linear:
    """A bias-free GCN weight, initialised uniform(+-1/sqrt(out_dim)) as GCDH's GraphConvolution."""
    layer = nn.Linear(in_dim, out_dim, bias=False)
    bound = 1 / math.sqrt(out_dim)
    nn.init.uniform_(layer.weight, -bound, bound)
    return layer


class GCNLabelClassifier(nn.Module):
    """P = adj (LeakyReLU(adj g W1)) W2 (C, 2F); label scores = [F_I || F_T] P^T (B, C)."""

    def __init__(self, cfg: GcdhConfig, adjacency: torch.Tensor, node_features: torch.Tensor):
        super().__init__()
        self.gc1 = graph_convolution(cfg.node_dim, cfg.gcn_hidden)
        self.gc2 = graph_convolution(cfg.gcn_hidden, 2 * cfg.hidden_dim)
        self.act = nn.LeakyReLU(0.2)  # models/gcn.py
        self.register_buffer("adjacency", adjacency)  # normalised, (C, C); fixed (GCDH detaches it)
        self.register_buffer("node_features", node_features)  # (C, E)

    def prototypes(self) -> torch.Tensor:
        h = self.act(self.adjacency @ self.gc1(self.node_features))  # (C, gcn_hidden)
        return self.adjacency @ self.gc2(h)  # (C, 2F)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return fused @ self.prototypes().T  # (B, C)


def kaiming_linear(in_dim: int, out_dim: int) -> nn.Linear:
    """GCDH's init of its own layers: kaiming_normal_ weights (fan_in, ReLU gain), zero bias."""
    layer = nn.Linear(in_dim, out_dim)
    nn.init.kaiming_normal_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def text_mlp(in_dim: int, width: int) -> nn.Sequential:
    """GCDH's TXT network without dropout: in -> 4F -> 2F -> F, each Linear + BatchNorm + ReLU."""
    widths = (in_dim, 4 * width, 2 * width, width)
    layers = []
    for a, b in zip(widths, widths[1:]):
        layers += [kaiming_linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
    return nn.Sequential(*layers)


class GCDH(Rebuildable):
    config_class = GcdhConfig

    def __init__(self, cfg: GcdhConfig, adjacency: torch.Tensor | None = None,
                 node_features: torch.Tensor | None = None):
        super().__init__()
        self.cfg = cfg
        self.image_net = trunk(cfg.image_dim, cfg)  # stands in for the fine-tuned ResNet-50
        self.text_net = text_mlp(cfg.text_dim, cfg.hidden_dim)
        self.image_hash = kaiming_linear(cfg.hidden_dim, cfg.bits)
        self.text_hash = kaiming_linear(cfg.hidden_dim, cfg.bits)
        # from_checkpoint passes no graph: the buffers come with the state dict
        if adjacency is None:
            adjacency = torch.zeros(cfg.n_labels, cfg.n_labels)
        if node_features is None:
            node_features = torch.zeros(cfg.n_labels, cfg.node_dim)
        self.classifier = GCNLabelClassifier(cfg, adjacency, node_features)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.image_hash(self.image_net(x)))  # (B, K)

    def encode_text(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.text_hash(self.text_net(x)))  # (B, K)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        f_image, f_text = self.image_net(image), self.text_net(text)  # (B, F) each
        return {"h_image": torch.tanh(self.image_hash(f_image)),
                "h_text": torch.tanh(self.text_hash(f_text)),
                "label_logits": self.classifier(torch.cat([f_image, f_text], dim=1))}


def build(bits: int, cfg, params: GcdhParams, data, graph):
    n = data.labels.shape[0]
    if n % cfg.batch_size == 1:
        # BatchNorm cannot normalise a batch of one sample (GCDH's loader keeps the last batch too)
        raise ValueError(f"gcdh: {n} training pairs in batches of {cfg.batch_size} leave a last batch of "
                         "one sample, which the text network's BatchNorm cannot train on; "
                         "choose another batch_size")
    model_cfg = GcdhConfig(image_dim=data.image.shape[1], text_dim=data.text.shape[1],
                           n_labels=data.labels.shape[1], node_dim=graph.node_features.shape[1], bits=bits,
                           hidden_dim=cfg.feature_dim, gcn_hidden=cfg.gat_hidden, dropout=cfg.dropout)
    adjacency = normalised_adjacency(torch.as_tensor(graph.adjacency), params.adjacency_reweight)
    model = GCDH(model_cfg, adjacency, torch.as_tensor(graph.node_features).float())
    return model, EgathObjective(cfg, data.labels, bits)


def optimizers(model: GCDH, cfg, params) -> list[torch.optim.Optimizer]:
    """main.py: one Adam each for the image model, the text model and the GCN, same lr and decay."""
    image = [*model.image_net.parameters(), *model.image_hash.parameters()]
    text = [*model.text_net.parameters(), *model.text_hash.parameters()]
    return [torch.optim.Adam(group, lr=cfg.lr, weight_decay=cfg.weight_decay)
            for group in (image, text, list(model.classifier.parameters()))]


METHOD = Method(
    name="gcdh", kind="supervised", source="Zjut-MultimediaPlus/GCDH",
    summary="EGATH's base: MLP branches, GCN label classifier on the fused features, tanh hash layers; "
            "alpha (NDCG-weighted cosine triplet) + ||B - h||^2 + BCE of the GCN label scores; discrete B update",
    build=build, from_checkpoint=GCDH.from_checkpoint, params=GcdhParams, optimizers=optimizers,
    # lr_scale: base.exponential_decay, GCDH's lr * ((lr_min / lr)^(1 / epochs))^epoch
    training_defaults={
        "lr": 1e-4, "lr_min": 1e-6,  # config.py lr; main.py decays towards 1e-6
        "weight_decay": 5e-4, "batch_size": 64,  # main.py Adam; config.py
        "margin": 0.4, "triplet_weight": 10.0,  # config.py margin, alpha
        "quantization_weight": 1.0, "classification_weight": 1.0,  # main.py: err = alpha tri + quant + class
        "code_lambda": 1.0, "code_gamma": 0.01, "code_rho": 1.05, "code_mu": 0.5,  # main.py; config.py
        "code_update": "gcdh", "loss_reduction": "sum",  # main.py: its algebra and its sums, exactly
        "feature_dim": 2048, "gat_hidden": 1024, "dropout": 0.0,  # config.py hidden_dim; models/gcn.py gc1
    },
    tuning_space={"lr": Range(1e-5, 1e-3), "triplet_weight": Range(1.0, 100.0)})
