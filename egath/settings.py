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
