"""One cell of the grid, as one workflow job: a method on one dataset at one code length,
trained with every seed, each model encoded and evaluated.

One process for all of it, because starting a process (importing torch and torch_geometric,
several seconds) costs more than a small training run. A seed whose model was already trained
under the same run key (settings, inputs, code, thread count) is reused, not trained again
(egath.training.train's `reuse_path`), so adding seeds to the config trains only the new ones.
"""
from __future__ import annotations

import logging
from pathlib import Path

from egath.encoding import encode_dataset
from egath.metrics import write_metrics
from egath.training import prepare_run, train_run
from egath.tuning import apply_tuning, read_tuning

log = logging.getLogger(__name__)


def reuse_path(model_path, seed: int) -> Path:
    """Where a cell keeps its finished models for reuse: beside the seed folders, out of the DAG."""
    return Path(model_path).parent.parent / ".trained" / f"seed{seed}.pt"


def train_and_evaluate(pairs, features, graph, *, method: str, bits: int, seeds: list[int],
                       params: dict, spec: dict | None, models, codes, metrics, protocol: dict,
                       device: str = "cpu", dataset: str = "", threads: int | None = None,
                       tuning=None, first_stage=None) -> list[dict]:
    """Train `method` once per seed (models[i] for seeds[i]), then write codes[i] and metrics[i];
    with `tuning` (a tuning.json, egath.tuning), with its best values over `params` and `spec`;
    a two-step method from `first_stage`, its first stage's output (egath.first_stage), shared
    by every seed. Returns the metrics of every seed."""
    if not len(seeds) == len(models) == len(codes) == len(metrics):
        raise ValueError(f"{len(seeds)} seeds need as many model, codes and metrics paths, got "
                         f"{len(models)}, {len(codes)}, {len(metrics)}")
    tuned = "not tuned"
    if tuning is not None:
        params, spec, tuned = apply_tuning(params, spec, read_tuning(tuning))
        log.info("%s", tuned)
    # the files checked, the training split loaded and its input form fitted once for every seed
    run = prepare_run(pairs, features, graph, method, bits, params, spec, dataset, device, first_stage)
    results = []
    for seed, model_path, codes_path, metrics_path in zip(seeds, models, codes, metrics):
        log.info("seed %d: training", seed)
        result = train_run(run.with_settings({"seed": seed}), model_path, reuse_path=reuse_path(model_path, seed))
        # encoding is a forward pass of small heads: the CPU does it, no GPU is held for it
        encode_dataset(model_path, pairs, features, codes_path, device="cpu")
        key = result["run_key"]  # what the model trained on and with, as it happened
        seed_protocol = {**protocol, "n_train": key["n_train"], "training_seed": seed, "tuning": tuned,
                         "torch_threads": key["torch_threads"], "device": key["device"],
                         **result.get("protocol", {})}
        results.append(write_metrics(codes_path, metrics_path, protocol=seed_protocol, threads=threads))
        tasks = results[-1]["tasks"]
        log.info("seed %d: mAP %s", seed, "  ".join(f"{task} {t['map']:.4f}" for task, t in tasks.items()))
    return results
