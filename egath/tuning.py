"""An equal tuning budget for every method: a small search over each method's own declared space,
scored on pairs held out of the training split, never on the query set.

For one dataset x method x code length, `tune` runs `trials` trials of `epochs` epochs each:
trial 0 with the untuned settings, the others at points of a scrambled Sobol sequence (the same
points for every method) mapped onto the method's `tuning_space` (egath.methods.base.Range per
dimension: a TrainConfig field or one of the method's own parameters). Every trial trains on the
training pairs minus `n_validation` held out ones, keeps its weights by the run's selection rule
(egath.training.select_weights), and is scored by the order-free validation mAP (mean of I->T and
T->I). The best trial's values go to tuning.json (docs/formats.md); the training job applies them
(`apply_tuning`). Each finished trial is added, with the search's key, to a file kept beside
tuning.json (`trials_path`), so a killed job resumes after its last finished trial, and a job run
again with the same key (settings, training data, code, torch threads) takes every trial from
there instead of training it again, as a training job reuses its kept models.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from egath import settings
from egath.io import atomic_output
from egath.methods import method_source
from egath.sources import code_digests
from egath.training import (Run, TrainConfig, key_changes, prepare_run, run_epochs, select_weights, start_training,
                            validation_map)

log = logging.getLogger(__name__)

TRAINING_KEYS = frozenset(f.name for f in fields(TrainConfig))  # a tuned name that is not one is a method parameter


@dataclass(frozen=True)
class TuningBudget:
    """The same for every method (config `tuning:`)."""
    trials: int = 8  # trial 0 runs the untuned settings
    epochs: int = 20  # epochs per trial (its schedule spans these)
    n_validation: int = 500  # training pairs held out to score the trials
    seed: int = 0  # the trials' training seed, which pairs are held out, and the search points

    @classmethod
    def from_dict(cls, values: dict) -> "TuningBudget":
        budget = settings.from_dict(cls, values, "tuning settings")
        if budget.trials < 1 or budget.epochs < 1 or budget.n_validation < 1:
            raise ValueError(f"tuning needs trials, epochs and n_validation >= 1, got {budget}")
        return budget


def trial_settings(space: dict, budget: TuningBudget) -> list[dict]:
    """The settings of every trial: {} (untuned) first, then one point of the space per trial."""
    if not space or budget.trials == 1:
        return [{}]
    sobol = torch.quasirandom.SobolEngine(len(space), scramble=True, seed=budget.seed)
    points = sobol.draw(budget.trials - 1, dtype=torch.float64).tolist()
    return [{}] + [{name: rng.value(u) for (name, rng), u in zip(space.items(), point)} for point in points]


def split_settings(run: Run, settings: dict) -> tuple[dict, dict]:
    """Settings as (training keys, method parameters); a name that is neither is an error."""
    method_keys = set(run.method.params.__dataclass_fields__)
    unknown = sorted(set(settings) - TRAINING_KEYS - method_keys)
    if unknown:
        raise ValueError(f"method {run.spec.model!r}: tuning_space names {unknown}, neither training "
                         f"settings nor its own parameters ({sorted(method_keys)})")
    return ({k: v for k, v in settings.items() if k in TRAINING_KEYS},
            {k: v for k, v in settings.items() if k in method_keys})


def score_trial(run: Run, settings: dict) -> float | None:
    """Train the run with `settings` over it and return its validation mAP (None if it diverged)."""
    trial = run.with_settings(*split_settings(run, settings))
    state = start_training(trial)
    try:
        run_epochs(trial, state)
    except FloatingPointError as e:
        log.warning("%s: trial %s diverged: %s", run.name, settings, e)
        return None
    select_weights(trial, state)
    return validation_map(state.model, trial.validation, run.device)


def tune(pairs_path, features_path, graph_path, out_path, method: str, bits: int, params: dict,
         spec: dict | None, budget: TuningBudget, dataset: str = "", device: str = "cpu",
         first_stage=None) -> dict:
    """Search the method's tuning space with `budget` and write tuning.json to `out_path`; a
    two-step method's trials share `first_stage`, its first stage's output (egath.first_stage)."""
    run = prepare_run(pairs_path, features_path, graph_path, method, bits,
                      {**params, "epochs": budget.epochs, "n_validation": budget.n_validation,
                       "validation_seed": budget.seed, "seed": budget.seed}, spec, dataset, device,
                      first_stage)
    space = dict(run.method.tuning_space)
    trials = trial_settings(space, budget)
    # the search's own code too, beside the training's
    key = {**run.key(), "code": code_digests([method_source(run.spec.model), "egath.tuning"]),
           "budget": asdict(budget), "trials": trials}
    kept = trials_path(out_path)
    done = _finished_trials(kept, key, run.name)
    if done:
        log.info("%s: %d of the %d trials already run with these settings, inputs and code: reusing "
                 "them (%s)", run.name, len(done), len(trials), kept)
    for number, settings in enumerate(trials[len(done):], start=len(done)):
        started = time.perf_counter()
        score = score_trial(run, settings)
        done.append({"trial": number, "settings": settings, "validation_map": score,
                     "seconds": time.perf_counter() - started})
        log.info("%s: trial %d/%d %s validation mAP %s (%.1f s)", run.name, number + 1, len(trials),
                 _describe(settings), "diverged" if score is None else f"{score:.4f}", done[-1]["seconds"])
        _write_json(kept, {"key": key, "trials": done})
    scored = [t for t in done if t["validation_map"] is not None]
    if not scored:
        raise FloatingPointError(f"{run.name}: every tuning trial diverged; lower the learning rates "
                                 "of the method's tuning_space")
    best = max(scored, key=lambda t: (t["validation_map"], -t["trial"]))
    result = {"dataset": run.dataset, "method": method, "model": run.spec.model, "kind": run.method.kind,
              "bits": bits, "budget": asdict(budget),
              "space": {name: asdict(rng) for name, rng in space.items()},
              "untuned": {k: v for k, v in {**asdict(run.cfg), **asdict(run.params)}.items() if k in space},
              "trials": done,
              "best": {"trial": best["trial"], "settings": best["settings"], "validation_map": best["validation_map"]}}
    _write_json(out_path, result)
    log.info("%s: best of %d trials: %s, validation mAP %.4f (untuned: %s)", run.name, len(trials),
             _describe(best["settings"]), best["validation_map"], done[0]["validation_map"])
    return result


def apply_tuning(params: dict, spec: dict | None, tuning: dict) -> tuple[dict, dict, str]:
    """(training params, method spec, protocol text) with the best trial's values over them."""
    settings = tuning["best"]["settings"]
    spec = dict(spec or {})
    spec["params"] = {**spec.get("params", {}), **{k: v for k, v in settings.items() if k not in TRAINING_KEYS}}
    budget = tuning["budget"]
    protocol = (f"tuned: {_describe(settings)} (best of {budget['trials']} trials x {budget['epochs']} "
                f"epochs on {budget['n_validation']} held-out training pairs)")
    return {**params, **{k: v for k, v in settings.items() if k in TRAINING_KEYS}}, spec, protocol


def read_tuning(path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable tuning result ({e}); delete it and run again") from e


def _describe(settings: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" for k, v in settings.items()) or "untuned settings"


def trials_path(out_path) -> Path:
    """Where a cell keeps its finished trials: beside its kept models, out of the DAG."""
    return Path(out_path).parent / ".trained" / "tuning-trials.json"


def _finished_trials(kept: Path, key: dict, name: str) -> list[dict]:
    """The trials `kept` holds if it was written under `key`."""
    try:
        state = json.loads(kept.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return []
    key = json.loads(json.dumps(key))  # as JSON reads it back: tuples become lists
    if state.get("key") != key:
        log.info("%s: searching again: %s holds trials of other %s", name, kept,
                 ", ".join(key_changes(state.get("key", {}), key)))
        return []
    return state["trials"]


def _write_json(path, value) -> None:
    with atomic_output(Path(path)) as tmp:
        Path(tmp).write_text(json.dumps(value, indent=2, allow_nan=False) + "\n", encoding="utf-8")
