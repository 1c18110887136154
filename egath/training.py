"""Training one method on the cached features of one dataset, with a checkpoint every epoch.

A run killed at any point and started again resumes from its last finished epoch and ends
with the same weights as an uninterrupted run (CPU, fixed seed): the batch order of epoch e
is drawn from `seed + e`, and the checkpoint carries the optimizer, the objective's state
(EGATH's code matrix B) and the RNG state.

Model selection is honest: either the last epoch, or the epoch with the best validation mAP
on pairs held out of the training set. Never the test (query) mAP, which the peers use.
"""
from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from egath.graph import load_graph
from egath.io import atomic_output, check_finite, open_h5, string_array
from egath.lineage import MismatchError, check_features, check_graph, pairs_lineage
from egath.methods import MethodSpec
from egath.methods.base import binarize
from egath.metrics import mean_average_precision
from egath.provenance import training_inputs

log = logging.getLogger(__name__)


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
    code_update: str = "penalty"  # B update: "penalty" (stable; README) or "gcdh" (GCDH's exact algebra)
    d_model: int = 512  # transformer width
    ff_dim: int = 2048  # transformer feed-forward width
    feature_dim: int = 512  # F_I, F_T
    gat_hidden: int = 1024  # first GAT layer (paper)
    dropout: float = 0.1
    selection: str = "last"  # "last" epoch, or the best "validation" mAP
    n_validation: int = 0  # training pairs held out for selection="validation"
    seed: int = 0

    @classmethod
    def from_dict(cls, params: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"unknown training parameters {unknown}; known: {sorted(known)}")
        cfg = cls(**params)
        if cfg.selection not in ("last", "validation"):
            raise ValueError(f"selection must be 'last' or 'validation', got {cfg.selection!r}")
        if cfg.code_update not in ("penalty", "gcdh"):
            raise ValueError(f"code_update must be 'penalty' or 'gcdh', got {cfg.code_update!r}")
        if (cfg.selection == "validation") != (cfg.n_validation > 0):
            raise ValueError("selection 'validation' needs n_validation > 0, and n_validation "
                             f"is only used with it (got {cfg.selection!r}, {cfg.n_validation})")
        return cfg


@dataclass
class TrainingData:
    image: torch.Tensor  # (N, d_clip) float32, cached CLIP image embeddings
    text: torch.Tensor  # (N, V) bag-of-words or (N, d_clip) CLIP text embeddings
    labels: torch.Tensor  # (N, C)

    def rows(self, index) -> "TrainingData":
        return TrainingData(self.image[index], self.text[index], self.labels[index])


def _kept_rows(pairs, features, split: str, features_path) -> np.ndarray:
    """The rows of a split whose image could be read (open pairs.h5 and features files)."""
    rows = pairs[f"split/{split}"][:]
    if features["image"].shape[0] != pairs["labels"].shape[0]:
        raise ValueError(f"{features_path} has {features['image'].shape[0]} rows, "
                         f"{pairs.filename} has {pairs['labels'].shape[0]}")
    if "image_skipped" in features:
        skipped = features["image_skipped"][:].astype(bool)[rows]
        if skipped.all():
            raise ValueError(f"{features_path}: no image of split {split!r} could be read")
        if skipped.any():
            log.info("%s: leaving out %d of the %d %s pairs, whose image could not be read "
                     "(image_skipped)", features_path, int(skipped.sum()), len(rows), split)
            rows = rows[~skipped]
    return rows


def split_rows(pairs_path, features_path, split: str) -> np.ndarray:
    """The rows of pairs.h5 that load_split loads for `split`, in its order."""
    with open_h5(pairs_path, ("labels", f"split/{split}")) as pairs, open_h5(features_path, ("image",)) as features:
        return _kept_rows(pairs, features, split, features_path)


def load_split(pairs_path, features_path, split: str, text: str = "bow") -> TrainingData:
    """The rows of one split (`train`, `query`, `database`) as float tensors.

    Pairs whose image could not be read at extraction (the features' `image_skipped`) are
    left out, and logged; NaN or inf in what is loaded stops with the file and rows named.
    """
    with open_h5(pairs_path, ("bow", "labels", f"split/{split}")) as pairs, \
            open_h5(features_path, ("image", "text")) as features:
        rows = _kept_rows(pairs, features, split, features_path)
        text_path, text_source = (pairs_path, pairs["bow"]) if text == "bow" else (features_path, features["text"])
        data = TrainingData(
            image=torch.from_numpy(features["image"][rows].astype(np.float32)),
            text=torch.from_numpy(text_source[rows].astype(np.float32)),
            labels=torch.from_numpy(pairs["labels"][rows].astype(np.float32)))
        for what, values in ((f"{features_path}: image", data.image), (f"{text_path}: {text_source.name[1:]}", data.text)):
            if not torch.isfinite(values).all():
                check_finite(values.numpy(), what, rows, string_array(pairs["ids"][()]) if "ids" in pairs else None)
        return data


def split_validation(data: TrainingData, n_validation: int, seed: int) -> tuple[TrainingData, TrainingData]:
    """Hold `n_validation` pairs out of the training set (seeded, reproducible)."""
    n = data.labels.shape[0]
    if not 0 < n_validation < n:
        raise ValueError(f"n_validation must be between 1 and {n - 1}, got {n_validation}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return data.rows(order[n_validation:].sort().values), data.rows(order[:n_validation].sort().values)


@torch.inference_mode()
def validation_map(model, validation: TrainingData, device: str) -> float:
    """Mean of I->T and T->I mAP with the held-out pairs as both queries and database."""
    model.eval()
    image = binarize(model.encode_image(validation.image.to(device))).cpu().numpy()
    text = binarize(model.encode_text(validation.text.to(device))).cpu().numpy()
    labels = validation.labels.numpy()
    model.train()
    return 0.5 * (mean_average_precision(image, text, labels, labels)
                  + mean_average_precision(text, image, labels, labels))


def train(pairs_path, features_path, graph_path, out_path, method: str, bits: int,
          params: dict, checkpoint_path=None, device: str = "cpu", dataset: str = "",
          spec: dict | None = None, reuse_path=None) -> dict:
    """Train one method and write its self-describing checkpoint to `out_path`.

    `method` names the run; `spec` (model, text input) defaults to the method name read as a
    model name; `dataset` defaults to the name pairs.h5 carries. `checkpoint_path` (default:
    `out_path` + `.ckpt`) holds the state after each epoch; it is removed once `out_path` is
    written. `reuse_path`, if given, keeps a hard link to the finished model: a later call with
    the same settings and inputs (the same run key) takes it from there instead of training.
    """
    method_spec = MethodSpec.parse(method, spec)
    method_def = method_spec.method()
    # the method's authors' settings first, then the user's training block and overrides
    cfg = TrainConfig.from_dict({**method_def.training_defaults, **params})
    method_params = method_def.make_params(method_spec.params)
    lineage = pairs_lineage(pairs_path)
    if dataset and lineage["dataset"] and dataset != lineage["dataset"]:
        raise MismatchError(f"training for dataset {dataset!r} was given {pairs_path}, "
                            f"which is dataset {lineage['dataset']!r}")
    dataset = dataset or lineage["dataset"]
    check_features(pairs_path, lineage, features_path)
    check_graph(pairs_path, lineage, graph_path)
    run_log = _RunLog(log, {"run": f"{dataset} {method} {bits} bits seed {cfg.seed}"})
    torch.manual_seed(cfg.seed)
    data = load_split(pairs_path, features_path, "train", text=method_spec.text)
    validation = None
    if cfg.selection == "validation":
        data, validation = split_validation(data, cfg.n_validation, cfg.seed)
    graph = load_graph(graph_path)
    if graph.adjacency.shape[0] != data.labels.shape[1]:
        raise ValueError(f"{graph_path} has {graph.adjacency.shape[0]} labels, "
                         f"{pairs_path} has {data.labels.shape[1]}")
    n = data.labels.shape[0]
    # what the run is trained on, for the run key: a checkpoint of other data is not resumed
    inputs_sha256 = _digest(data.image, data.text, data.labels, graph.adjacency, graph.node_features,
                            *((validation.image, validation.text, validation.labels) if validation else ()))
    data = TrainingData(*(t.to(device) for t in (data.image, data.text, data.labels)))
    model, objective = method_def.build(bits, cfg, method_params, data, graph)
    model = model.to(device)
    # a closed-form method (fitted when built) has nothing to train
    trains = any(p.requires_grad for p in model.parameters())
    epochs = cfg.epochs if trains else 0
    optimizers = method_def.optimizers(model, cfg, method_params) if trains else []
    base_lrs = [[group["lr"] for group in opt.param_groups] for opt in optimizers]
    history: list[dict] = []
    best = {"score": -math.inf, "epoch": 0, "state_dict": None}
    start_epoch = 0

    checkpoint_path = Path(checkpoint_path or f"{out_path}.ckpt")
    on_gpu = str(device).startswith("cuda")
    run_key = {"method_spec": asdict(method_spec), "bits": bits, "config": asdict(cfg),
               "method_params": asdict(method_params), "n_train": n, "inputs_sha256": inputs_sha256}
    if reuse_path is not None and Path(reuse_path).exists():
        done = _load_cache(reuse_path, "cpu", run_log)
        if done.get("run_key") == run_key:
            run_log.info("already trained with these settings and inputs: reusing %s", reuse_path)
            _link(reuse_path, out_path)
            return done
    if checkpoint_path.exists():
        ckpt = _load_cache(checkpoint_path, device, run_log)
        if ckpt.get("run_key") == run_key:
            model.load_state_dict(ckpt["state_dict"])
            for opt, state in zip(optimizers, ckpt["optimizers"]):
                opt.load_state_dict(state)
            objective.load_state_dict(ckpt["objective"])
            history, start_epoch, best = ckpt["history"], ckpt["epoch"], ckpt["best"]
            torch.set_rng_state(ckpt["rng_state"])
            if on_gpu and ckpt["cuda_rng_state"] is not None:
                torch.cuda.set_rng_state_all(ckpt["cuda_rng_state"])
            run_log.info("resuming from %s after epoch %d", checkpoint_path, start_epoch)
        else:
            run_log.info("ignoring %s: it belongs to other settings or inputs", checkpoint_path)

    # outputs and loss sums stay on the device: one host sync per epoch, not per batch
    h_image = torch.zeros(n, bits, device=device)
    h_text = torch.zeros(n, bits, device=device)
    for epoch in range(start_epoch, epochs):
        started = time.perf_counter()
        model.train()
        sums: dict[str, torch.Tensor] = {}
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + epoch))
        batches = order.to(device).split(cfg.batch_size)
        for phase in objective.phases:
            objective.begin_phase(phase)
            for step, batch in enumerate(batches):
                scale = method_def.lr_scale(cfg, method_params, epoch + step / len(batches))
                for opt, lrs in zip(optimizers, base_lrs):
                    for group, lr in zip(opt.param_groups, lrs):
                        # a group may opt out of the schedule (DSPH's proxies: a constant rate)
                        group["lr"] = lr * scale if group.get("scheduled", True) else lr
                out = model(data.image[batch], data.text[batch])
                terms = objective.loss(out, data.labels[batch], batch)
                for opt in optimizers:
                    opt.zero_grad(set_to_none=True)
                terms["total"].backward()
                for opt in optimizers:
                    opt.step()
                h_image[batch] = out["h_image"].detach()
                h_text[batch] = out["h_text"].detach()
                for name, value in terms.items():
                    sums[name] = sums.get(name, 0.0) + value.detach()
        totals = {name: float(value) / n for name, value in sums.items()}
        epoch_stats = {name: float(value) for name, value in (objective.end_epoch(h_image, h_text) or {}).items()}
        if not all(math.isfinite(v) for v in totals.values()):
            raise FloatingPointError(
                f"{run_log.extra['run']}, epoch {epoch + 1}: loss is not finite: {totals}. The "
                "inputs were checked finite when loaded, so training diverged: try a lower lr")
        record = {"epoch": epoch + 1, "lr": method_def.lr_scale(cfg, method_params, epoch) * base_lrs[0][0],
                  **totals, **epoch_stats}
        if validation is not None:
            record["validation_map"] = validation_map(model, validation, device)
            if record["validation_map"] > best["score"]:
                best = {"score": record["validation_map"], "epoch": epoch + 1,
                        "state_dict": copy.deepcopy(model.state_dict())}
        record["seconds"] = time.perf_counter() - started
        history.append(record)
        run_log.info("epoch %d/%d %s", epoch + 1, cfg.epochs,
                 " ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch"))
        with atomic_output(checkpoint_path) as tmp:
            torch.save({"run_key": run_key, "state_dict": model.state_dict(),
                        "optimizers": [opt.state_dict() for opt in optimizers],
                        "objective": objective.state_dict(),
                        "history": history, "epoch": epoch + 1, "best": best,
                        "rng_state": torch.get_rng_state(),
                        "cuda_rng_state": torch.cuda.get_rng_state_all() if on_gpu else None},
                       tmp)

    if epochs == 0:
        selection = "closed form (no training epochs)"
    elif validation is not None:
        model.load_state_dict(best["state_dict"])
        selection = (f"best validation mAP (epoch {best['epoch']} of {cfg.epochs}, "
                     f"{cfg.n_validation} training pairs held out)")
    else:
        selection = "last epoch"
    result = {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
              "model_config": asdict(model.cfg), "config": asdict(cfg), "history": history,
              "method": method, "kind": method_def.kind, "method_spec": asdict(method_spec),
              "method_params": asdict(method_params), "dataset": dataset,
              "bits": bits, "epoch_selection": selection,
              "inputs": {**training_inputs(pairs_path, features_path),
                         **{key: lineage[key] for key in ("split_sha256", "labels_sha256", "source_sha256")}},
              "run_key": run_key,
              "protocol": objective.protocol()}
    with atomic_output(out_path) as tmp:
        torch.save(result, tmp)
    if reuse_path is not None:
        _link(out_path, reuse_path)
    checkpoint_path.unlink(missing_ok=True)
    return result


def _load_cache(path, device, run_log) -> dict:
    """A checkpoint or a kept finished model; an unreadable one (a full disk, a copy cut short)
    is only a lost cache: warned about and ignored."""
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as e:
        run_log.warning("ignoring %s: unreadable (%s: %s)", path, type(e).__name__, e)
        return {}


def _link(source, target) -> None:
    """Make `target` the same file as `source` (a hard link; a copy where links are not possible)."""
    with atomic_output(target) as tmp:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


class _RunLog(logging.LoggerAdapter):
    """Every line of a training names its run (dataset, method, bits, seed): jobs run side by
    side share the terminal."""

    def process(self, msg, kwargs):
        return f"{self.extra['run']}: {msg}", kwargs


def _digest(*arrays) -> str:
    """sha256 of arrays' shapes, dtypes and bytes."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a.numpy() if isinstance(a, torch.Tensor) else a)
        h.update(f"{a.dtype}{a.shape}".encode() + a.tobytes())
    return h.hexdigest()
