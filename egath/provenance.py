"""What a model was trained on, so that it is never paired with files it does not belong with.

`training_inputs` is recorded in model.pt (key `inputs`) when a model is trained; the search
index records the same facts of the files it was built from, and `differences` names what
disagrees when a model and an index (or a collection) meet.
"""
from __future__ import annotations

from egath.io import open_h5, string_array, strings_digest


def encoder_of(features_path) -> str:
    """The CLIP encoder a features file names in its provenance: "model (pretrained)"."""
    with open_h5(features_path) as f:
        model, pretrained = (f.attrs.get(key, "") for key in ("model", "pretrained"))
    return f"{_text(model)} ({_text(pretrained) or 'none'})"


def pairs_facts(pairs_path) -> dict:
    """The dataset name and vocabulary digest of a pairs.h5 ("" where the file has none)."""
    with open_h5(pairs_path) as f:
        vocabulary = string_array(f["vocabulary"][()]) if "vocabulary" in f else None
        dataset = _text(f.attrs.get("dataset", ""))
    return {"dataset": dataset, "vocabulary_sha256": strings_digest(vocabulary) if vocabulary else ""}


def training_inputs(pairs_path, features_path) -> dict:
    """What model.pt records of its inputs: dataset, vocabulary digest, encoder."""
    return {**pairs_facts(pairs_path), "encoder": encoder_of(features_path)}


def differences(a: dict, b: dict, keys, names: tuple[str, str]) -> list[str]:
    """"key: <names[0]> a, <names[1]> b" for each of `keys` where both sides know a value
    and the values differ.

    A side without a value (a model.pt from before these facts were recorded) is not a
    difference: there is nothing to compare.
    """
    out = []
    for key in keys:
        x, y = a.get(key), b.get(key)
        if x not in (None, "") and y not in (None, "") and str(x) != str(y):
            out.append(f"{key}: {names[0]} {x}, {names[1]} {y}")
    return out


def model_facts(ckpt: dict) -> dict:
    """What a loaded model.pt says of itself and of its inputs, in the keys the checks compare."""
    inputs = ckpt.get("inputs", {})
    return {"dataset": inputs.get("dataset") or ckpt["dataset"], "method": ckpt["method"],
            "bits": int(ckpt["bits"]), "encoder": inputs.get("encoder", ""),
            "vocabulary_sha256": inputs.get("vocabulary_sha256", "")}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
