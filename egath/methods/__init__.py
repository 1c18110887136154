"""Every method the workflow can train, one module each, and the one registry of their names.

    REGISTRY[model name] -> "module:attribute" of its `Method` (egath.methods.base)

A method's `model` in config is a name in REGISTRY, or a user's own method: a Python file
(`my_methods/toy.py`, relative to the working directory) or an importable module
(`my_package.toy`), which defines `METHOD` (or `path:ATTRIBUTE` for another name). How to add
one: docs/methods.md.

This module imports no torch, so the workflow can check names when it starts.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from functools import lru_cache

REGISTRY = {  # model name -> where its Method is defined
    "egath": "egath.methods.egath:EGATH_METHOD",
    "egath-g": "egath.methods.egath:EGATH_G",
    "egath-t": "egath.methods.egath:EGATH_T",
    "dchmt": "egath.methods.dchmt:METHOD",
    "dsph": "egath.methods.dsph:METHOD",
    "dnph": "egath.methods.dnph:METHOD",
    "dnph-tmm": "egath.methods.dnph_tmm:METHOD",
    "dimch": "egath.methods.dimch:METHOD",
    "twdh": "egath.methods.twdh:METHOD",
    "itq": "egath.methods.itq:METHOD",
    "gcdh": "egath.methods.gcdh:METHOD",
    "dcmh": "egath.methods.dcmh:METHOD",
    "ucch": "egath.methods.ucch:METHOD",
    "jdsh": "egath.methods.jdsh:METHOD",
    "djsrh": "egath.methods.djsrh:METHOD",
    "mith": "egath.methods.mith:METHOD",
}
# EGATH and the paper's ablations: the tables and figures list them first
EGATH_FAMILY = ("egath", "egath-g", "egath-t")
TEXT_INPUTS = ("bow", "clip")


@dataclass(frozen=True)
class FirstStage:
    """The first step of a method that trains in two: a workflow job of its own (rule first_stage,
    egath.first_stage) whose output file the method's training and tuning read."""
    run: str  # "module:function" of the step, imported only by its job
    settings: str  # the key of the method's `params` that holds the step's own settings


# The methods that train in two steps, by model name: the one list of them. The workflow reads it
# when it starts (so it names no torch module), to give those methods a first-stage job.
FIRST_STAGES = {
    "twdh": FirstStage(run="egath.methods.twdh:fit_transform", settings="transform"),
}


def _location(model: str) -> tuple[str, str]:
    """(module or file, attribute) of a model name, a file path or a dotted module."""
    target = REGISTRY.get(model, model)
    where, _, attribute = target.rpartition(":") if ":" in target else (target, "", "METHOD")
    return where, attribute


def method_source(model: str) -> str:
    """The module name or file path that holds a model's code (egath.sources reads it)."""
    return _location(model)[0]


def check_model(model: str) -> None:
    """Raise ValueError unless `model` names a registered method or an existing file/module.
    Cheap (imports nothing): the workflow calls it for every method before any job runs."""
    where, _ = _location(model)
    if model in REGISTRY:
        return
    if where.endswith(".py"):
        if not os.path.isfile(where):
            raise ValueError(f"unknown method model {model!r}: no such file {where!r}; "
                             f"known models: {sorted(REGISTRY)}")
        return
    try:
        found = importlib.util.find_spec(where) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ValueError(f"unknown method model {model!r}; known: {sorted(REGISTRY)}, "
                         "or a path to a .py file or an importable module that defines METHOD")


@lru_cache(maxsize=None)
def load_method(model: str):
    """The Method a model name (or a user's file or module) stands for."""
    check_model(model)
    where, attribute = _location(model)
    if where.endswith(".py"):
        spec = importlib.util.spec_from_file_location(f"egath_user_method_{abs(hash(where))}", where)
        module = importlib.util.module_from_spec(spec)
        # registered before it runs, as an import would: dataclasses with string annotations
        # (`from __future__ import annotations`) look their module up in sys.modules
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"method model {model!r}: {where} defines no {attribute}") from None


@dataclass(frozen=True)
class MethodSpec:
    model: str = "egath"  # a name in REGISTRY, or a user's method file or module
    text: str = "bow"  # bow: the paper's bag-of-words; clip: cached CLIP text features
    params: dict = field(default_factory=dict)  # overrides of the method's own hyper-parameters
    inputs: dict = field(default_factory=dict)  # overrides of its input form (egath.inputs)

    def __post_init__(self):
        check_model(self.model)
        if self.text not in TEXT_INPUTS:
            raise ValueError(f"unknown text input {self.text!r}; known: {list(TEXT_INPUTS)}")

    @classmethod
    def parse(cls, method: str, spec: dict | None) -> "MethodSpec":
        """The spec from config; where it names no model, the method's name is the model."""
        return cls(**{"model": method, **(spec or {})})

    def method(self):
        """The Method, checked against this spec's text input."""
        method = load_method(self.model)
        if self.text not in method.text_inputs:
            raise ValueError(f"method model {self.model!r} needs text: {' or '.join(method.text_inputs)}, "
                             f"got text: {self.text!r}")
        return method


def model_from_checkpoint(ckpt: dict):
    """Rebuild any trained model from its model.pt alone; it reads the cached features as they
    are (its input transform, if any, in front of it)."""
    from egath.inputs import InputTransform

    model = load_method(ckpt["method_spec"]["model"]).from_checkpoint(ckpt)
    return InputTransform.from_state(ckpt["input_transform"]).wrap(model)
