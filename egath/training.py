"""Training one method on the cached features of one dataset, with a checkpoint every epoch.

`train` reads as its steps:

    run = prepare_run(...)        inputs loaded, held-out pairs split off, brought to the method's form
    reuse a finished model, or resume a checkpoint of the same run key
    for each epoch: train_epoch(run, state, epoch); checkpoint
    select_weights(run, state)    the weights that are kept: averaged, best on validation, or last
    write model.pt

egath.tuning runs the same steps for each trial of its search.

A run killed at any point and started again resumes from its last finished epoch and ends with
the same weights as an uninterrupted run (CPU, fixed seed): the batch order of epoch e is drawn
from `seed + e`, and the checkpoint carries the optimizer, the objective's state (EGATH's code
matrix B), the weight average and the RNG state.

Model selection is honest and does not hang on the last epoch's luck: by default the weights are
averaged over the last epochs (`average_window`); or the epoch with the best validation mAP on
pairs held out of the training set; or the last. Never the test (query) mAP, which the peers use.
"""
from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from egath.first_stage import load_first_stage
from egath.graph import LabelGraph, load_graph
from egath.inputs import InputTransform
from egath.io import atomic_output, check_finite, open_h5, string_array
from egath.lineage import MismatchError, check_features, check_graph, inputs_record, pairs_lineage
from egath.methods import MethodSpec, method_source
from egath.methods.base import Method, binarize
from egath.metrics import mean_average_precision
from egath import settings
from egath.sources import code_digests

log = logging.getLogger(__name__)

SELECTIONS = ("average", "validation", "last")
CODE_UPDATES = ("relative", "penalty", "gcdh")  # egath.methods.egath.update_codes


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
    loss_reduction: str = "mean"  # EGATH-family terms per sample (this project), or summed over the batch as GCDH ("sum")
    code_lambda: float = 1.0  # lambda in R = (L^T L + lambda I)^-1 L^T B (GCDH)
    code_gamma: float = 0.01  # gamma_0 of the B = C term of penalty and gcdh (GCDH)
    code_rho: float = 1.05  # gamma <- rho gamma each epoch, gcdh only (GCDH)
    code_mu: float = 0.5  # mu, weight of the network outputs in the B update (GCDH, paper)
    code_update: str = "relative"  # B update: relative, penalty or gcdh (docs/methods.md)
    code_pull: float = 0.5  # relative: the pull towards C as a share of the size of L R + mu (H_I + H_T)
    d_model: int = 512  # transformer width
    ff_dim: int = 2048  # transformer feed-forward width
    feature_dim: int = 512  # F_I, F_T
    gat_hidden: int = 1024  # first GAT layer (paper)
    dropout: float = 0.1
    selection: str = "average"  # "average" the last epochs' weights, the best "validation" mAP, or the "last"
    average_window: float = 0.2  # selection average: the share of the epochs, counted from the end, averaged
    n_validation: int = 0  # training pairs held out: selection "validation", and a per-epoch curve
    validation_seed: int = 0  # which pairs are held out: the same for every training seed
    seed: int = 0

    @classmethod
    def from_dict(cls, params: dict) -> "TrainConfig":
        cfg = settings.from_dict(cls, params, "training parameters")
        if cfg.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {list(SELECTIONS)}, got {cfg.selection!r}")
        if cfg.loss_reduction not in ("mean", "sum"):
            raise ValueError(f"loss_reduction must be mean or sum, got {cfg.loss_reduction!r}")
        if cfg.code_update not in CODE_UPDATES:
            raise ValueError(f"code_update must be one of {list(CODE_UPDATES)}, got {cfg.code_update!r}")
        if cfg.selection == "validation" and cfg.n_validation <= 0:
            raise ValueError("selection 'validation' needs n_validation > 0 training pairs held out")
        if not 0 < cfg.average_window <= 1:
            raise ValueError(f"average_window must be in (0, 1], got {cfg.average_window}")
        return cfg

    def averaged_epochs(self) -> int:
        """How many of the last epochs selection 'average' averages (at least one)."""
        return max(1, round(self.average_window * self.epochs))


@dataclass
class TrainingData:
    image: torch.Tensor  # (N, d_clip) float32, cached CLIP image embeddings
    text: torch.Tensor  # (N, V) bag-of-words or (N, d_clip) CLIP text embeddings
    labels: torch.Tensor  # (N, C)

    def rows(self, index) -> "TrainingData":
        return TrainingData(self.image[index], self.text[index], self.labels[index])

    def to(self, device) -> "TrainingData":
        return TrainingData(self.image.to(device), self.text.to(device), self.labels.to(device))


# --------------------------------------------------------------------------- inputs

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


def load_split(pairs_path, features_path, split: str, text: str = "bow") -> TrainingData:
    """The rows of one split (`train`, `query`, `database`) as float tensors.

    Pairs whose image could not be read at extraction (the features' `image_skipped`) are
    left out, and logged; NaN or inf in what is loaded stops with the file and rows named.
    """
    return load_split_rows(pairs_path, features_path, split, text)[1]


def load_split_rows(pairs_path, features_path, split: str, text: str = "bow") -> tuple[np.ndarray, TrainingData]:
    """load_split, and the rows of pairs.h5 it loaded, in its order."""
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
        return rows, data


def split_validation(data: TrainingData, n_validation: int, seed: int) -> tuple[TrainingData, TrainingData]:
    """Hold `n_validation` pairs out of the training set (seeded, reproducible)."""
    n = data.labels.shape[0]
    if not 0 < n_validation < n:
        raise ValueError(f"n_validation must be between 1 and {n - 1}, got {n_validation}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return data.rows(order[n_validation:].sort().values), data.rows(order[:n_validation].sort().values)


@torch.inference_mode()
def validation_map(model, validation: TrainingData, device: str) -> float:
    """Mean of I->T and T->I mAP (order-free) with the held-out pairs as both queries and database."""
    was_training = model.training
    model.eval()
    image = binarize(model.encode_image(validation.image.to(device))).cpu().numpy()
    text = binarize(model.encode_text(validation.text.to(device))).cpu().numpy()
    labels = validation.labels.numpy()
    model.train(was_training)
    return 0.5 * (mean_average_precision(image, text, labels, labels)
                  + mean_average_precision(text, image, labels, labels))


@dataclass
class Run:
    """What one training run reads, prepared once: a tuning job's trials and a job's seeds share it."""
    spec: MethodSpec
    method: Method
    bits: int
    cfg: TrainConfig
    params: Any  # the method's own hyper-parameters (its params dataclass)
    data: TrainingData  # the training pairs, in the method's input form, on the device
    validation: TrainingData | None  # held-out pairs in the same form, on the CPU
    graph: LabelGraph
    transform: InputTransform
    inputs_sha256: str  # digest of what is trained on: a checkpoint of other data is not resumed
    inputs: dict  # what model.pt records of its input files (egath.lineage.inputs_record)
    dataset: str
    method_name: str  # the name the run is trained under (the config's), beside its model's
    device: str
    first_stage: dict | None = None  # a two-step method's first-stage tensors (egath.first_stage), else None

    @property
    def name(self) -> str:
        """The "dataset method bits" prefix of every log line."""
        return f"{self.dataset} {self.method_name} {self.bits} bits"

    def with_settings(self, training: dict | None = None, method_params: dict | None = None) -> "Run":
        """The same inputs under other settings (a tuning trial): training keys over the config,
        method parameters over the method's."""
        cfg = TrainConfig.from_dict({**asdict(self.cfg), **(training or {})})
        params = self.method.make_params({**asdict(self.params), **(method_params or {})})
        return replace(self, cfg=cfg, params=params)

    def key(self) -> dict:
        """Everything the trained weights depend on: decides whether a checkpoint is resumed
        or a kept model reused. Beside the settings and the data: the code that trains (the
        method's module and the egath modules it and egath.training import, egath.sources),
        and torch's thread count and the device, which change the float results."""
        return {"method_spec": asdict(self.spec), "bits": self.bits, "config": asdict(self.cfg),
                "method_params": asdict(self.params), "n_train": self.data.labels.shape[0],
                "inputs_sha256": self.inputs_sha256,
                "code": code_digests([method_source(self.spec.model), "egath.training"]),
                "torch_threads": torch.get_num_threads(), "device": torch.device(self.device).type}


def prepare_run(pairs_path, features_path, graph_path, method: str, bits: int, params: dict,
                spec: dict | None = None, dataset: str = "", device: str = "cpu", first_stage=None) -> Run:
    """Check that the files belong together, load the training split, hold out the validation
    pairs, and bring both to the method's input form (egath.inputs). `first_stage`: the output of
    the method's first stage, for a method that trains in two steps (egath.first_stage)."""
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
    features = check_features(pairs_path, lineage, features_path)
    check_graph(pairs_path, lineage, graph_path)
    stage = load_first_stage(first_stage, method_spec, method_params, bits, pairs_path, lineage)
    data = load_split(pairs_path, features_path, "train", text=method_spec.text)
    validation = None
    if cfg.n_validation > 0:
        data, validation = split_validation(data, cfg.n_validation, cfg.validation_seed)
    graph = load_graph(graph_path)
    if graph.adjacency.shape[0] != data.labels.shape[1]:
        raise ValueError(f"{graph_path} has {graph.adjacency.shape[0]} labels, "
                         f"{pairs_path} has {data.labels.shape[1]}")
    transform = InputTransform.fit(method_def.inputs.override(method_spec.inputs), data.image, data.text)
    inputs_sha256 = _digest(data.image, data.text, data.labels, graph.adjacency, graph.node_features,
                            *(stage[name] for name in sorted(stage or {})),
                            *((validation.image, validation.text, validation.labels) if validation else ()))
    if validation is not None:
        validation = transform.apply(validation)
    return Run(spec=method_spec, method=method_def, bits=bits,
               cfg=cfg, params=method_params, data=transform.apply(data).to(device), validation=validation,
               graph=graph, transform=transform, inputs_sha256=inputs_sha256,
               inputs=inputs_record(lineage, features), dataset=dataset, method_name=method,
               device=device, first_stage=stage)


# --------------------------------------------------------------------------- the loop

@dataclass
class TrainingState:
    """Everything that changes while a run trains, and what a checkpoint saves."""
    model: nn.Module
    objective: Any  # egath.methods.base.Objective
    optimizers: list
    base_lrs: list  # each optimizer's base learning rate per group
    averaged: AveragedModel | None  # selection average: the running mean of the last epochs' weights
    history: list
    best: dict  # selection validation: {"score", "epoch", "state_dict"}
    epoch: int = 0  # epochs finished

    def checkpoint(self, run_key: dict, on_gpu: bool) -> dict:
        return {"run_key": run_key, "state_dict": self.model.state_dict(),
                "optimizers": [opt.state_dict() for opt in self.optimizers],
                "objective": self.objective.state_dict(),
                "averaged": None if self.averaged is None else self.averaged.state_dict(),
                "history": self.history, "epoch": self.epoch, "best": self.best,
                "rng_state": torch.get_rng_state(),
                "cuda_rng_state": torch.cuda.get_rng_state_all() if on_gpu else None}

    def restore(self, ckpt: dict, on_gpu: bool) -> None:
        self.model.load_state_dict(ckpt["state_dict"])
        for opt, state in zip(self.optimizers, ckpt["optimizers"]):
            opt.load_state_dict(state)
        self.objective.load_state_dict(ckpt["objective"])
        if self.averaged is not None:
            self.averaged.load_state_dict(ckpt["averaged"])
        self.history, self.epoch, self.best = ckpt["history"], ckpt["epoch"], ckpt["best"]
        torch.set_rng_state(ckpt["rng_state"])
        if on_gpu and ckpt["cuda_rng_state"] is not None:
            torch.cuda.set_rng_state_all(ckpt["cuda_rng_state"])


def start_training(run: Run) -> TrainingState:
    """The model, objective and optimisers of a run, seeded by its training seed."""
    torch.manual_seed(run.cfg.seed)
    # a two-step method's build takes its first stage's output as well
    stage = {} if run.first_stage is None else {"first_stage": run.first_stage}
    model, objective = run.method.build(run.bits, run.cfg, run.params, run.data, run.graph, **stage)
    model = model.to(run.device)
    # a closed-form method (fitted when built) has nothing to train
    trains = any(p.requires_grad for p in model.parameters())
    optimizers = run.method.optimizers(model, run.cfg, run.params) if trains else []
    averaged = AveragedModel(model) if trains and run.cfg.selection == "average" else None
    return TrainingState(model, objective, optimizers,
                         [[group["lr"] for group in opt.param_groups] for opt in optimizers],
                         averaged, history=[], best={"score": -math.inf, "epoch": 0, "state_dict": None})


def train_epoch(run: Run, state: TrainingState, outputs: tuple[torch.Tensor, torch.Tensor]) -> dict:
    """One epoch: every phase of the objective over all training pairs in a new seeded order,
    then the objective's end-of-epoch update; returns the epoch's history record."""
    cfg, method, data, epoch = run.cfg, run.method, run.data, state.epoch
    started = time.perf_counter()
    state.model.train()
    h_image, h_text = outputs  # (N, K) each: the epoch's outputs, for the end-of-epoch update
    sums: dict[str, torch.Tensor] = {}  # stay on the device: one host sync per epoch, not per batch
    order = torch.randperm(len(data.labels), generator=torch.Generator().manual_seed(cfg.seed + epoch))
    batches = order.to(run.device).split(cfg.batch_size)
    for phase in state.objective.phases:
        state.objective.begin_phase(phase)
        for step, batch in enumerate(batches):
            scale = method.lr_scale(cfg, run.params, epoch + step / len(batches))
            for opt, lrs in zip(state.optimizers, state.base_lrs):
                for group, lr in zip(opt.param_groups, lrs):
                    # a group may opt out of the schedule (DSPH's proxies: a constant rate)
                    group["lr"] = lr * scale if group.get("scheduled", True) else lr
            out = state.model(data.image[batch], data.text[batch])
            terms = state.objective.loss(out, data.labels[batch], batch)
            for opt in state.optimizers:
                opt.zero_grad(set_to_none=True)
            terms["total"].backward()
            for opt in state.optimizers:
                opt.step()
            h_image[batch] = out["h_image"].detach()
            h_text[batch] = out["h_text"].detach()
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value.detach()
    n = len(data.labels)
    totals = {name: float(value) / n for name, value in sums.items()}
    epoch_stats = {name: float(value) for name, value in (state.objective.end_epoch(h_image, h_text) or {}).items()}
    if not all(math.isfinite(v) for v in totals.values()):
        raise FloatingPointError(
            f"{run.name} seed {cfg.seed}, epoch {epoch + 1}: loss is not finite: {totals}. The "
            "inputs were checked finite when loaded, so training diverged: try a lower lr")
    state.epoch = epoch + 1
    record = {"epoch": state.epoch, "lr": method.lr_scale(cfg, run.params, epoch) * state.base_lrs[0][0],
              **totals, **epoch_stats}
    if state.averaged is not None and state.epoch > cfg.epochs - cfg.averaged_epochs():
        state.averaged.update_parameters(state.model)
    if run.validation is not None:
        record["validation_map"] = validation_map(state.model, run.validation, run.device)
        if cfg.selection == "validation" and record["validation_map"] > state.best["score"]:
            state.best = {"score": record["validation_map"], "epoch": state.epoch,
                          "state_dict": copy.deepcopy(state.model.state_dict())}
    record["seconds"] = time.perf_counter() - started
    state.history.append(record)
    return record


def select_weights(run: Run, state: TrainingState) -> str:
    """Load the weights that are kept into state.model; returns how they were chosen."""
    cfg = run.cfg
    if not state.optimizers:
        return "closed form (no training epochs)"
    if cfg.selection == "validation":
        state.model.load_state_dict(state.best["state_dict"])
        return (f"best validation mAP (epoch {state.best['epoch']} of {cfg.epochs}, "
                f"{cfg.n_validation} training pairs held out)")
    if cfg.selection == "average":
        state.model.load_state_dict(state.averaged.module.state_dict())
        refresh_batch_norm(state.model, run.data, cfg.batch_size)
        window = cfg.averaged_epochs()
        return f"weights averaged over the last {window} epochs ({cfg.epochs - window + 1}-{cfg.epochs})"
    return "last epoch"


@torch.no_grad()
def refresh_batch_norm(model: nn.Module, data: TrainingData, batch_size: int) -> None:
    """Running statistics of every BatchNorm layer recomputed for the (averaged) weights, over one
    pass of the training pairs in order; torch.optim.swa_utils.update_bn does the same for a model
    of one input."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the pass
    was_training = model.training
    model.train()
    for batch in torch.arange(len(data.labels), device=data.labels.device).split(batch_size):
        model(data.image[batch], data.text[batch])
    model.train(was_training)
    for m, momentum in momenta.items():
        m.momentum = momentum


def run_epochs(run: Run, state: TrainingState, after_epoch=None) -> None:
    """Train the epochs not yet trained, logging each; `after_epoch(state)` runs after each."""
    n, bits = len(run.data.labels), run.bits
    outputs = (torch.zeros(n, bits, device=run.device), torch.zeros(n, bits, device=run.device))
    for _ in range(state.epoch, run.cfg.epochs if state.optimizers else 0):  # a closed-form method has none
        record = train_epoch(run, state, outputs)
        log.info("%s seed %d: epoch %d/%d %s", run.name, run.cfg.seed, record["epoch"], run.cfg.epochs,
                 " ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch"))
        if after_epoch is not None:
            after_epoch(state)


# --------------------------------------------------------------------------- one run, to model.pt

def train(pairs_path, features_path, graph_path, out_path, method: str, bits: int,
          params: dict, checkpoint_path=None, device: str = "cpu", dataset: str = "",
          spec: dict | None = None, reuse_path=None, first_stage=None) -> dict:
    """Train one method and write its self-describing checkpoint to `out_path`.

    `method` names the run; `spec` (model, text input, params, inputs) defaults to the method name
    read as a model name; `dataset` defaults to the name pairs.h5 carries. `checkpoint_path`
    (default: `out_path` + `.ckpt`) holds the state after each epoch; it is removed once
    `out_path` is written. `reuse_path`, if given, keeps a hard link to the finished model: a later
    call with the same settings and inputs (the same run key) takes it from there instead of
    training. `first_stage`: the output of a two-step method's first stage (egath.first_stage),
    part of the run key.
    """
    run = prepare_run(pairs_path, features_path, graph_path, method, bits, params, spec, dataset, device,
                      first_stage)
    return train_run(run, out_path, checkpoint_path, reuse_path)


def train_run(run: Run, out_path, checkpoint_path=None, reuse_path=None) -> dict:
    """Train a prepared run (prepare_run; several seeds can share one, `Run.with_settings`) and
    write model.pt to `out_path`; `checkpoint_path` and `reuse_path` as for `train`."""
    run_key = run.key()
    if reuse_path is not None and Path(reuse_path).exists():
        done = _load_cache(reuse_path, "cpu", run)
        if done.get("run_key") == run_key:
            log.info("%s seed %d: already trained with these settings, inputs and code: reusing %s",
                     run.name, run.cfg.seed, reuse_path)
            _link(reuse_path, out_path)
            return done
        if done:
            log.info("%s seed %d: training again: %s was trained with other %s", run.name, run.cfg.seed,
                     reuse_path, ", ".join(key_changes(done.get("run_key", {}), run_key)))
    state = start_training(run)
    checkpoint_path = Path(checkpoint_path or f"{out_path}.ckpt")
    on_gpu = str(run.device).startswith("cuda")
    if checkpoint_path.exists():
        ckpt = _load_cache(checkpoint_path, run.device, run)
        if ckpt.get("run_key") == run_key:
            state.restore(ckpt, on_gpu)
            log.info("%s seed %d: resuming from %s after epoch %d", run.name, run.cfg.seed,
                     checkpoint_path, state.epoch)
        elif ckpt:
            log.info("%s seed %d: ignoring %s: it belongs to other %s", run.name, run.cfg.seed,
                     checkpoint_path, ", ".join(key_changes(ckpt.get("run_key", {}), run_key)))

    def save_checkpoint(state):
        with atomic_output(checkpoint_path) as tmp:
            torch.save(state.checkpoint(run_key, on_gpu), tmp)

    run_epochs(run, state, after_epoch=save_checkpoint)
    selection = select_weights(run, state)
    result = {"state_dict": {k: v.cpu() for k, v in state.model.state_dict().items()},
              "model_config": asdict(state.model.cfg), "config": asdict(run.cfg), "history": state.history,
              "method": run.method_name, "kind": run.method.kind, "method_spec": asdict(run.spec),
              "method_params": asdict(run.params), "input_transform": run.transform.state(),
              "dataset": run.dataset, "bits": run.bits, "epoch_selection": selection,
              "inputs": run.inputs,
              "run_key": run_key,
              "protocol": state.objective.protocol()}
    with atomic_output(out_path) as tmp:
        torch.save(result, tmp)
    if reuse_path is not None:
        _link(out_path, reuse_path)
    checkpoint_path.unlink(missing_ok=True)
    return result


def key_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """The entries in which two run keys differ, dotted (`config.lr`, `code.egath/training.py`)."""
    changes = []
    for name in sorted(set(old) | set(new), key=str):
        a, b = old.get(name), new.get(name)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += key_changes(a, b, f"{prefix}{name}.")
        elif a != b:
            changes.append(f"{prefix}{name}")
    return changes


def _load_cache(path, device, run: Run) -> dict:
    """A checkpoint or a kept finished model; an unreadable one (a full disk, a copy cut short)
    is only a lost cache: warned about and ignored."""
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as e:
        log.warning("%s seed %d: ignoring %s: unreadable (%s: %s)", run.name, run.cfg.seed, path,
                    type(e).__name__, e)
        return {}


def _link(source, target) -> None:
    """Make `target` the same file as `source` (a hard link; a copy where links are not possible)."""
    with atomic_output(target) as tmp:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


def _digest(*arrays) -> str:
    """sha256 of arrays' shapes, dtypes and bytes."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a.numpy() if isinstance(a, torch.Tensor) else a)
        h.update(f"{a.dtype}{a.shape}".encode() + a.tobytes())
    return h.hexdigest()
