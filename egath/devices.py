"""Which torch device a job runs on."""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def select_device(requested: str = "auto") -> str:
    """`auto`: the GPU when there is one, else the CPU (and say so); `cpu` or `cuda` to force."""
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {requested!r}")
    if requested == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        log.info("running on %s", torch.cuda.get_device_name())
        return "cuda"
    if requested == "cuda":
        raise RuntimeError("device: cuda was asked for, but torch sees no GPU")
    log.info("no GPU found: running on the CPU")
    return "cpu"
