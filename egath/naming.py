"""Names derived from the configuration, shared by the workflow and the package (no heavy imports)."""
from __future__ import annotations

import os
from pathlib import Path

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def normalise_pretrained(pretrained) -> str:
    if pretrained is None:
        return "none"
    p = str(pretrained).strip()
    return "none" if p == "" or p.lower() == "none" else p


def looks_like_path(p: str) -> bool:
    return os.sep in p or "/" in p or p.lower().endswith(CHECKPOINT_SUFFIXES)


def encoder_slug(model_name: str, pretrained) -> str:
    """The ``{encoder}`` path component for a model and its weights.

    ``("ViT-B-32", "openai")`` -> ``"ViT-B-32_openai"``; random weights -> ``"..._none"``;
    a local checkpoint path contributes its file stem.
    """
    tag = normalise_pretrained(pretrained)
    if tag != "none" and (looks_like_path(tag) or os.path.isfile(tag)):
        tag = Path(tag).stem
    slug = f"{model_name}_{tag}"
    # Keep it one safe path component (hf-hub:org/repo has ':' and '/').
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in slug)
