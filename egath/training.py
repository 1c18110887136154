"""Training one model on the cached features of one dataset, with a checkpoint every epoch.

A run killed at any point and started again resumes from its last finished epoch and ends
with the same weights as an uninterrupted run (CPU, fixed seed): the batch order of epoch e
is drawn from `seed + e`, and the checkpoint carries the optimizer, the code state and the
RNG state.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from egath.graph import load_graph
from egath.io import atomic_output, open_h5
from egath.losses import CodeState, egath_loss, update_codes
from egath.model import ModelConfig, build_model

log = logging.getLogger(__name__)

METHODS = {  # method name -> switches; the ablations of the paper's Table 3
    "egath": {"use_gat": True, "use_triplet": True},
    "egath-g": {"use_gat": False, "use_triplet": True},
    "egath-t": {"use_gat": True, "use_triplet": False},
}


@dataclass
class TrainConfig:
    epochs: int = 100  # the paper gives none; GCDH runs 300
    batch_size: int = 64  # paper
    lr: float = 1e-4  # GCDH
    lr_min: float = 1e-6  # GCDH: exponential decay from lr to lr_min over the epochs
    weight_decay: float = 5e-4  # paper (Adam)
    margin: float = 0.4  # triplet margin (GCDH)
    triplet_weight: float = 10.0  # alpha in alpha (tri_I + tri_T) (GCDH)
    quantization_weight: float = 1.0  # beta (GCDH)
    classification_weight: float = 1.0  # weight of the BCE term (GCDH)
    code_lambda: float = 1.0  # lambda in R = (L^T L + lambda I)^-1 L^T B (GCDH)
    code_gamma: float = 0.01  # gamma_0 of the B = C penalty (GCDH)
    code_rho: float = 1.05  # gamma <- rho gamma each epoch (GCDH)
    code_mu: float = 0.5  # mu, weight of the network outputs in the B update (GCDH, paper)
    d_model: int = 512
    ff_dim: int = 2048
    feature_dim: int = 512
    gat_hidden: int = 1024
    dropout: float = 0.1
    seed: int = 0

    @classmethod
    def from_dict(cls, params: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"unknown training parameters {unknown}; known: {sorted(known)}")
        return cls(**params)


@dataclass
class TrainingData:
    image: torch.Tensor  # (N, d_clip) float32, cached CLIP image embeddings
    text: torch.Tensor  # (N, V) float32 bag-of-words
    labels: torch.Tensor  # (N, C)


def load_split(pairs_path, features_path, split: str) -> TrainingData:
    """The rows of one split (`train`, `query`, `database`) as float tensors."""
    with open_h5(pairs_path, ("bow", "labels", f"split/{split}")) as pairs, \
            open_h5(features_path, ("image",)) as features:
        rows = pairs[f"split/{split}"][:]
        if features["image"].shape[0] != pairs["labels"].shape[0]:
            raise ValueError(f"{features_path} has {features['image'].shape[0]} rows, "
                             f"{pairs_path} has {pairs['labels'].shape[0]}")
        return TrainingData(
            image=torch.from_numpy(features["image"][rows].astype(np.float32)),
            text=torch.from_numpy(pairs["bow"][rows].astype(np.float32)),
            labels=torch.from_numpy(pairs["labels"][rows].astype(np.float32)))


def make_model(method: str, bits: int, cfg: TrainConfig, data: TrainingData, graph) -> torch.nn.Module:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {sorted(METHODS)}")
    model_cfg = ModelConfig(
        image_dim=data.image.shape[1], text_dim=data.text.shape[1], n_labels=data.labels.shape[1],
        node_dim=graph.node_features.shape[1], bits=bits, d_model=cfg.d_model, ff_dim=cfg.ff_dim,
        feature_dim=cfg.feature_dim, gat_hidden=cfg.gat_hidden, dropout=cfg.dropout,
        use_gat=METHODS[method]["use_gat"])
    return build_model(model_cfg, graph.adjacency, graph.node_features)


def _lr_at(cfg: TrainConfig, epoch: int) -> float:
    decay = (cfg.lr_min / cfg.lr) ** (1 / max(cfg.epochs, 1))
    return cfg.lr * decay ** epoch


def train(pairs_path, features_path, graph_path, out_path, method: str, bits: int,
          params: dict, checkpoint_path=None, device: str = "cpu", dataset: str = "") -> dict:
    """Train one model and write its self-describing checkpoint to `out_path`.

    `checkpoint_path` (default: `out_path` + `.ckpt`) holds the state after each epoch; it is
    removed once `out_path` is written.
    """
    cfg = TrainConfig.from_dict(params)
    switches = METHODS.get(method, {})
    torch.manual_seed(cfg.seed)
    data = load_split(pairs_path, features_path, "train")
    graph = load_graph(graph_path)
    if graph.adjacency.shape[0] != data.labels.shape[1]:
        raise ValueError(f"{graph_path} has {graph.adjacency.shape[0]} labels, "
                         f"{pairs_path} has {data.labels.shape[1]}")
    model = make_model(method, bits, cfg, data, graph).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = data.labels.shape[0]
    state = CodeState.initial(n, bits, cfg.code_gamma, torch.Generator().manual_seed(cfg.seed))
    history: list[dict] = []
    start_epoch = 0

    checkpoint_path = Path(checkpoint_path or f"{out_path}.ckpt")
    run_key = {"method": method, "bits": bits, "config": asdict(cfg), "n_train": n}
    if checkpoint_path.exists():
        ckpt = torch.load(checkpoint_path, map_location=device, weights_only=False)
        if ckpt["run_key"] == run_key:
            model.load_state_dict(ckpt["state_dict"])
            optimizer.load_state_dict(ckpt["optimizer"])
            state = CodeState(**ckpt["code_state"])
            history, start_epoch = ckpt["history"], ckpt["epoch"]
            torch.set_rng_state(ckpt["rng_state"])
            log.info("resuming from %s after epoch %d", checkpoint_path, start_epoch)
        else:
            log.info("ignoring %s: it belongs to other settings", checkpoint_path)

    on_device = TrainingData(*(t.to(device) for t in (data.image, data.text, data.labels)))
    h_image = torch.zeros(n, bits)
    h_text = torch.zeros(n, bits)
    for epoch in range(start_epoch, cfg.epochs):
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(cfg, epoch)
        model.train()
        totals: dict[str, float] = {}
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + epoch))
        for batch in order.split(cfg.batch_size):
            batch_dev = batch.to(device)
            out = model(on_device.image[batch_dev], on_device.text[batch_dev])
            labels = on_device.labels[batch_dev]
            terms = egath_loss(out, labels, state.codes[batch].to(device), cfg.margin,
                               cfg.triplet_weight, cfg.quantization_weight,
                               cfg.classification_weight, switches.get("use_triplet", True))
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            optimizer.step()
            h_image[batch] = out["h_image"].detach().cpu()
            h_text[batch] = out["h_text"].detach().cpu()
            for name, value in terms.items():
                totals[name] = totals.get(name, 0.0) + float(value.detach()) / n
        state = update_codes(state, data.labels, h_image, h_text, cfg.code_lambda, cfg.code_mu, cfg.code_rho)
        if not all(math.isfinite(v) for v in totals.values()):
            raise FloatingPointError(f"epoch {epoch + 1}: loss is not finite: {totals}")
        history.append({"epoch": epoch + 1, "lr": _lr_at(cfg, epoch),
                        "seconds": time.perf_counter() - started, **totals})
        log.info("epoch %d/%d %s", epoch + 1, cfg.epochs,
                 " ".join(f"{k}={v:.4g}" for k, v in history[-1].items() if k != "epoch"))
        with atomic_output(checkpoint_path) as tmp:
            torch.save({"run_key": run_key, "state_dict": model.state_dict(),
                        "optimizer": optimizer.state_dict(), "code_state": asdict(state),
                        "history": history, "epoch": epoch + 1,
                        "rng_state": torch.get_rng_state()}, tmp)

    result = {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
              "model_config": asdict(model.cfg), "config": asdict(cfg), "history": history,
              "method": method, "dataset": dataset, "bits": bits,
              "epoch_selection": "last"}
    with atomic_output(out_path) as tmp:
        torch.save(result, tmp)
    checkpoint_path.unlink(missing_ok=True)
    return result
