"""PCA-ITQ (Gong & Lazebnik, CVPR 2011), unsupervised and closed form, in CLIP's shared
image-text space: the bottom of the table.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from egath.inputs import InputForm
from egath.methods.base import ClosedForm, Method, Rebuildable

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


class ITQ(Rebuildable):
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
        return model, ClosedForm()


METHOD = Method(
    name="itq", kind="unsupervised", source="(Gong & Lazebnik 2011; no hashing code of its own)",
    summary="PCA of the L2-normalised training images and texts together, then the ITQ rotation",
    build=lambda bits, cfg, params, data, graph: ITQ.build(bits, cfg, data),
    from_checkpoint=ITQ.from_checkpoint, text_inputs=("clip",),
    inputs=InputForm())  # L2-normalises and centres the cached features itself
