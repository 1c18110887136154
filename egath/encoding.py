"""Hash codes of the query and database sets of both modalities, from a trained model."""
from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import torch

from egath.io import atomic_output
from egath.lineage import check_model, pairs_lineage
from egath.methods.base import binarize
from egath.methods import MethodSpec, model_from_checkpoint
from egath.training import load_split_rows

log = logging.getLogger(__name__)


@torch.inference_mode()
def encode_codes(encode, x: torch.Tensor, batch_size: int, device: str) -> np.ndarray:
    """sign(encode(x)) as int8 {-1, +1}, in batches."""
    chunks = [binarize(encode(chunk.to(device))).cpu() for chunk in x.split(batch_size)]
    return torch.cat(chunks).to(torch.int8).numpy()


def encode_dataset(model_path, pairs_path, features_path, out_path, device: str = "cpu",
                   batch_size: int = 1024) -> Path:
    """Write `codes.h5`: sign(h) for query and database, image and text (docs/formats.md).

    A model trained on other data (dataset, split, label set, source rows, CLIP encoder) than
    `pairs_path` and `features_path` is refused (egath.lineage.MismatchError)."""
    try:
        ckpt = torch.load(model_path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch's message names no file
        raise ValueError(f"{model_path}: not a readable model file (truncated or corrupt?): {str(e).rstrip('.')}. "
                         "Delete it and run again to train it again") from e
    check_model(model_path, ckpt, pairs_path, pairs_lineage(pairs_path), features_path)
    model = model_from_checkpoint(ckpt).to(device).eval()
    with atomic_output(out_path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(dataset=ckpt["dataset"], method=ckpt["method"], model=ckpt["method_spec"]["model"],
                       kind=ckpt["kind"], bits=ckpt["bits"], epoch_selection=ckpt["epoch_selection"])
        for split in ("query", "database"):
            # rows: which pairs these are, the split less those whose image was skipped at extraction
            rows, data = load_split_rows(pairs_path, features_path, split, text=MethodSpec(**ckpt["method_spec"]).text)
            f.create_dataset(f"{split}/image", data=encode_codes(model.encode_image, data.image, batch_size, device))
            f.create_dataset(f"{split}/text", data=encode_codes(model.encode_text, data.text, batch_size, device))
            f.create_dataset(f"{split}/labels", data=data.labels.numpy().astype(np.uint8))
            f.create_dataset(f"{split}/rows", data=rows)
            log.info("%s %s %d bits: %d %s codes of each modality", ckpt["dataset"], ckpt["method"],
                     ckpt["bits"], len(data.labels), split)
    return Path(out_path)
