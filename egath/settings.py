"""Settings dataclasses from a config's dicts: a key the dataclass has no field for is an error
that names it and the known ones, before anything runs."""
from __future__ import annotations

from dataclasses import fields


def from_dict(cls, values: dict | None, what: str):
    """cls(**values), refusing unknown keys ("unknown <what> [...]; known: [...]")."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values or {}) - known)
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; known: {sorted(known)}")
    return cls(**(values or {}))


def job_training(config: dict, dataset: str, method: str, bits: int) -> dict:
    """A job's training settings: the config's `training`, then each `train_overrides` entry whose
    `dataset`, `bits` and `method` selectors (each absent: all; one value; or a list) match it."""
    job = {"dataset": dataset, "bits": bits, "method": method}
    params = dict(config.get("training") or {})
    for override in config.get("train_overrides") or []:
        if all(_selects(override.get(key), value) for key, value in job.items()):
            params.update(override["params"])
    return params


def method_spec(config: dict, method: str) -> dict:
    """Model, text input, params and inputs of a method's config entry (egath.methods.MethodSpec),
    without what only the workflow reads (`tune`, `bits`); an empty entry: model = the name."""
    entry = config["methods"][method] or {}
    return {key: value for key, value in entry.items() if key not in ("tune", "bits")}


def _selects(selector, value) -> bool:
    if selector is None:
        return True
    return value in selector if isinstance(selector, list) else value == selector
