"""The first step of a method that trains in two (egath.methods.FIRST_STAGES), as a job of its own.

    results/{dataset}/{method}/{bits}/first_stage.pt    what the step made, and from what

`run_first_stage` runs the method's step on the training split and writes first_stage.pt: the
step's tensors, the settings they were made with (resolved), the model name and code length, and
the facts of the pairs and features it read (egath.lineage). The method's training and tuning
read it with `load_first_stage`, which refuses a file made for another model, code length,
dataset, split or settings, and names what differs.

A killed job resumes after its last finished epoch (first_stage.pt.ckpt, written atomically after
each epoch; one of other settings or inputs is ignored) and ends as an uninterrupted run would;
first_stage.pt is written atomically, once, at the end.
"""
from __future__ import annotations

import importlib
import logging
import time
from pathlib import Path

import torch

from egath.io import atomic_output
from egath.lineage import MismatchError, check, check_features, inputs_record, pairs_lineage
from egath.methods import FIRST_STAGES, FirstStage, MethodSpec

log = logging.getLogger(__name__)

FACTS = ("dataset", "split_sha256", "labels_sha256", "source_sha256")  # of pairs.h5, checked on reading


def stage_and_settings(spec: MethodSpec, params=None) -> tuple[FirstStage, dict]:
    """A method's first stage and its resolved settings (from `params`, the method's resolved
    parameters, or else from the spec's)."""
    stage = FIRST_STAGES.get(spec.model)
    if stage is None:
        raise ValueError(f"method model {spec.model!r} trains in one step: it has no first stage "
                         f"(the models that have one: {sorted(FIRST_STAGES)})")
    params = params if params is not None else spec.method().make_params(spec.params)
    return stage, getattr(params, stage.settings)


def run_first_stage(pairs_path, features_path, out_path, method: str, bits: int, spec: dict | None = None,
                    dataset: str = "", device: str = "cpu") -> dict:
    """Run the first step of `method` (its model, text input and first-step settings in `spec`) for
    `bits`-bit codes on the training split, and write out_path; returns what it wrote."""
    # egath.training reads first stages (load_first_stage): imported here to avoid an import cycle
    from egath.training import _digest, load_split

    method_spec = MethodSpec.parse(method, spec)
    stage, settings = stage_and_settings(method_spec)
    lineage = pairs_lineage(pairs_path)
    if dataset and lineage["dataset"] and dataset != lineage["dataset"]:
        raise MismatchError(f"first stage for dataset {dataset!r} was given {pairs_path}, "
                            f"which is dataset {lineage['dataset']!r}")
    features = check_features(pairs_path, lineage, features_path)
    data = load_split(pairs_path, features_path, "train", text=method_spec.text)
    key = {"model": method_spec.model, "bits": bits, "settings": settings,
           "inputs_sha256": _digest(data.image, data.text, data.labels)}
    checkpoint_path = Path(f"{out_path}.ckpt")
    resume = _resumable(checkpoint_path, key)
    if resume is not None:
        log.info("%s %s %d bits: resuming the first stage from %s after epoch %d", lineage["dataset"], method,
                 bits, checkpoint_path, resume["epoch"])

    def save(state: dict) -> None:
        with atomic_output(checkpoint_path) as tmp:
            torch.save({"key": key, "state": state}, tmp)

    module, _, function = stage.run.partition(":")
    started = time.perf_counter()
    made = getattr(importlib.import_module(module), function)(bits, settings, data, device=device, resume=resume,
                                                              save=save)
    record = {**key, "method": method, "dataset": dataset or lineage["dataset"],
              "inputs": inputs_record(lineage, features, FACTS),
              "tensors": made["tensors"], "summary": made["summary"], "seconds": time.perf_counter() - started}
    with atomic_output(out_path) as tmp:
        torch.save(record, tmp)
    checkpoint_path.unlink(missing_ok=True)
    log.info("%s %s %d bits: first stage written to %s (%.1f s)", record["dataset"], method, bits, out_path,
             record["seconds"])
    return record


def load_first_stage(path, spec: MethodSpec, params, bits: int, pairs_path, lineage: dict) -> dict | None:
    """The tensors of a first stage's output for a run of `spec` with resolved `params` at `bits`
    on `pairs_path` (whose facts are `lineage`); None for a method that trains in one step."""
    if spec.model not in FIRST_STAGES:
        if path:
            raise ValueError(f"method model {spec.model!r} trains in one step and reads no first stage; got {path}")
        return None
    if not path:
        raise ValueError(f"method model {spec.model!r} trains in two steps: its training reads the output of "
                         "its first stage (rule first_stage; egath.first_stage.run_first_stage), and none was given")
    stage, settings = stage_and_settings(spec, params)
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a readable first-stage output ({type(e).__name__}: {e}); delete it and "
                         "run again") from e
    differ = [f"{name}: {record.get(name)!r} in {path}, {want!r} for this run"
              for name, want in (("model", spec.model), ("bits", bits)) if record.get(name) != want]
    differ += [f"{stage.settings}.{name}: {record['settings'].get(name)!r} in {path}, {value!r} for this run"
               for name, value in settings.items() if record.get("settings", {}).get(name) != value]
    if differ:
        raise ValueError(f"{path} was made for another run: " + "; ".join(differ)
                         + ". Run its first stage again (delete it; the workflow remakes it)")
    check(path, record["inputs"], pairs_path, lineage, FACTS)
    return record["tensors"]


def _resumable(checkpoint_path: Path, key: dict) -> dict | None:
    """The state saved in a checkpoint of the same key; an unreadable one (a full disk, a copy cut
    short) or one of other settings or inputs is only a lost cache: logged and ignored."""
    if not checkpoint_path.exists():
        return None
    try:
        ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    except Exception as e:
        log.warning("ignoring %s: unreadable (%s: %s)", checkpoint_path, type(e).__name__, e)
        return None
    if ckpt.get("key") != key:
        log.info("ignoring %s: it belongs to other settings or inputs", checkpoint_path)
        return None
    return ckpt["state"]
