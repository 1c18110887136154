"""Each method's inputs in the form its authors' hyper-parameters were made for.

Every method reads the same cached features: unit-length CLIP image (and text) embeddings and
binary bag-of-words rows. Its authors tuned learning rates, initialisations and normalisers on
other inputs (raw CNN-F, AlexNet or VGG fc7 activations and ResNet pooled features, none of them
normalised; raw or mean-free tags), so each method declares an `InputForm` beside its defaults and
the cached features are brought to it, with statistics measured on the training split only:

    none         as cached
    centre       x - mean
    standardise  (x - mean) / std, per dimension: unit variance, a norm of about sqrt(dim)

The fitted shift and scale travel in model.pt (`input_transform`), so encoding and search apply
the same transform to new inputs. docs/methods.md gives each method's form and its measured
effect; `methods.<name>.inputs` overrides it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from egath import settings

TRANSFORMS = ("none", "centre", "standardise")
# a dimension that never varies in the training split keeps its values' scale (a constant word column)
_MIN_STD = 1e-6


@dataclass(frozen=True)
class InputForm:
    """How a method wants its image and text inputs (one of TRANSFORMS each)."""
    image: str = "none"
    text: str = "none"

    def __post_init__(self):
        for modality, kind in asdict(self).items():
            if kind not in TRANSFORMS:
                raise ValueError(f"inputs.{modality}: unknown transform {kind!r}; known: {list(TRANSFORMS)}")

    def override(self, overrides: dict | None) -> "InputForm":
        """This form with a config's `methods.<name>.inputs` over it."""
        return settings.from_dict(InputForm, {**asdict(self), **(overrides or {})}, "inputs keys")


@dataclass
class Affine:
    """x -> (x - shift) / scale, per dimension."""
    shift: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def fit(cls, x: torch.Tensor, kind: str) -> "Affine | None":
        """The transform `kind` measured on training rows x (N, d); None for `none`."""
        if kind == "none":
            return None
        shift = x.mean(0)
        scale = x.std(0).clamp_min(_MIN_STD) if kind == "standardise" else torch.ones_like(shift)
        return cls(shift, scale)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift.to(x.device)) / self.scale.to(x.device)


@dataclass
class InputTransform:
    """The fitted transform of both modalities (None: the input as cached)."""
    form: InputForm
    image: Affine | None
    text: Affine | None

    @classmethod
    def fit(cls, form: InputForm, image: torch.Tensor, text: torch.Tensor) -> "InputTransform":
        return cls(form, Affine.fit(image, form.image), Affine.fit(text, form.text))

    def apply(self, data):
        """A TrainingData (egath.training) with both modalities transformed."""
        return type(data)(self.image_input(data.image), self.text_input(data.text), data.labels)

    def image_input(self, x):
        return x if self.image is None else self.image(x)

    def text_input(self, x):
        return x if self.text is None else self.text(x)

    def state(self) -> dict:
        """What model.pt keeps (`input_transform`)."""
        return {"form": asdict(self.form),
                **{name: None if a is None else {"shift": a.shift.cpu(), "scale": a.scale.cpu()}
                   for name, a in (("image", self.image), ("text", self.text))}}

    @classmethod
    def from_state(cls, state: dict) -> "InputTransform":
        return cls(InputForm(**state["form"]),
                   *(None if state[name] is None else Affine(**state[name]) for name in ("image", "text")))

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model with this transform in front of it; the model itself where there is none."""
        return model if self.image is None and self.text is None else TransformedInputs(model, self)


class TransformedInputs(nn.Module):
    """A trained model that reads cached features as they are: its encoders see them transformed."""

    def __init__(self, model: nn.Module, transform: InputTransform):
        super().__init__()
        self.model, self.transform, self.cfg = model, transform, model.cfg

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(self.transform.image_input(x))

    def encode_text(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(self.transform.text_input(x))

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model(self.transform.image_input(image), self.transform.text_input(text))
