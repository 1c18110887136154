"""A built-in image–text dataset drawn from a seed, so the whole workflow runs without a download.

Each image holds one to three objects; an object's kind is its label. Kinds prefer a colour,
so even a randomly initialised image encoder sees some of the label signal. Each text is a
bag of tags: the kinds' names or synonyms, sometimes their colours, noise words, and with some
probability an object's tag is missing, as with real Flickr tags. Kinds come in companion
pairs that tend to share an image, so labels co-occur as they do in real data.

With companions that nearly always appear together and tags that are often missing
(`companion_probability`, `missing_tag_probability`; configs/demo-graph.yaml), a kind whose tag
is missing is still told by its companion's: label co-occurrence then carries what the text
does not, the case a label graph can help with.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from egath.io import atomic_output

KINDS = {  # label name -> words a tagger might use for it
    "circle": ["circle", "round", "disc"],
    "square": ["square", "box", "block"],
    "triangle": ["triangle", "wedge"],
    "diamond": ["diamond", "rhombus"],
    "star": ["star", "starry"],
    "cross": ["cross", "plus"],
    "ring": ["ring", "donut", "hoop"],
    "hexagon": ["hexagon", "honeycomb"],
}
# Kinds that tend to appear together, so the label graph has edges to learn from.
COMPANIONS = {"circle": "ring", "ring": "circle", "square": "diamond", "diamond": "square",
              "star": "cross", "cross": "star", "triangle": "hexagon", "hexagon": "triangle"}
COMPANION_PROBABILITY = 0.6
COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
    "purple": (140, 60, 180), "orange": (240, 140, 30), "cyan": (40, 200, 210), "white": (240, 240, 240),
}
NOISE_WORDS = ["photo", "nice", "art", "shape", "colour", "cool", "2019", "canon", "bright",
               "abstract", "pattern", "design", "geometry", "macro", "fun", "minimal"]
PREFERRED_COLOUR_PROBABILITY = 0.7
MISSING_TAG_PROBABILITY = 0.15
COLOUR_TAG_PROBABILITY = 0.4


def _regular_polygon(cx: float, cy: float, r: float, sides: int, rotation: float) -> list[tuple]:
    return [(cx + r * math.cos(rotation + 2 * math.pi * i / sides),
             cy + r * math.sin(rotation + 2 * math.pi * i / sides)) for i in range(sides)]


def _draw_object(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float,
                 colour: tuple, rotation: float) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if kind == "circle":
        draw.ellipse(box, fill=colour)
    elif kind == "ring":
        draw.ellipse(box, outline=colour, width=max(2, int(r / 3)))
    elif kind == "square":
        draw.polygon(_regular_polygon(cx, cy, r, 4, rotation + math.pi / 4), fill=colour)
    elif kind == "diamond":
        draw.polygon([(cx, cy - r), (cx + 0.6 * r, cy), (cx, cy + r), (cx - 0.6 * r, cy)], fill=colour)
    elif kind == "triangle":
        draw.polygon(_regular_polygon(cx, cy, r, 3, rotation - math.pi / 2), fill=colour)
    elif kind == "hexagon":
        draw.polygon(_regular_polygon(cx, cy, r, 6, rotation), fill=colour)
    elif kind == "star":
        points = [(cx + (r if i % 2 == 0 else 0.45 * r) * math.cos(rotation + math.pi * i / 5),
                   cy + (r if i % 2 == 0 else 0.45 * r) * math.sin(rotation + math.pi * i / 5))
                  for i in range(10)]
        draw.polygon(points, fill=colour)
    elif kind == "cross":
        w = r / 3
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=colour)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=colour)
    else:
        raise ValueError(f"unknown object kind {kind!r}")


def make_sample(rng: np.random.Generator, image_size: int, companion_probability: float = COMPANION_PROBABILITY,
                missing_tag_probability: float = MISSING_TAG_PROBABILITY) -> tuple[Image.Image, str, list[str]]:
    """Draw one image and its tags; returns (image, text, label names)."""
    kinds, colours = list(KINDS), list(COLOURS)
    background = tuple(int(v) for v in rng.integers(0, 70, size=3))
    image = Image.new("RGB", (image_size, image_size), background)
    draw = ImageDraw.Draw(image)
    n_objects = int(rng.integers(1, 4))
    chosen = [int(rng.integers(len(kinds)))]
    for _ in range(n_objects - 1):
        companion = kinds.index(COMPANIONS[kinds[chosen[0]]])
        chosen.append(companion if rng.random() < companion_probability else int(rng.integers(len(kinds))))
    tags: list[str] = []
    for k in chosen:
        kind = kinds[k]
        preferred = colours[k % len(colours)]
        colour = preferred if rng.random() < PREFERRED_COLOUR_PROBABILITY else colours[rng.integers(len(colours))]
        r = image_size * rng.uniform(0.12, 0.25)
        cx, cy = rng.uniform(r, image_size - r, size=2)
        _draw_object(draw, kind, cx, cy, r, COLOURS[colour], rng.uniform(0, math.pi))
        if rng.random() >= missing_tag_probability:
            synonyms = KINDS[kind]
            tags.append(synonyms[rng.integers(len(synonyms))])
        if rng.random() < COLOUR_TAG_PROBABILITY:
            tags.append(colour)
    tags += [NOISE_WORDS[i] for i in rng.choice(len(NOISE_WORDS), size=int(rng.integers(1, 4)), replace=False)]
    rng.shuffle(tags)
    labels = sorted({kinds[k] for k in chosen}, key=kinds.index)
    return image, " ".join(tags), labels


def make_synthetic_dataset(out_dir: str | Path, n_pairs: int = 2000, seed: int = 0, image_size: int = 64,
                           companion_probability: float = COMPANION_PROBABILITY,
                           missing_tag_probability: float = MISSING_TAG_PROBABILITY) -> Path:
    """Write `images/`, `manifest.tsv` and `labels.txt` under `out_dir`; returns the manifest path.

    The same seed and settings give byte-identical files.
    """
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be positive, got {n_pairs}")
    for name, p in (("companion_probability", companion_probability), ("missing_tag_probability", missing_tag_probability)):
        if not 0 <= p <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {p}")
    out_dir = Path(out_dir)
    images = out_dir / "images"
    if images.exists():
        shutil.rmtree(images)
    images.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    rows = ["id\timage\ttext\tlabels"]
    for i in range(n_pairs):
        image, text, labels = make_sample(rng, image_size, companion_probability, missing_tag_probability)
        name = f"images/{i:06d}.png"
        image.save(out_dir / name)
        rows.append(f"s{i:06d}\t{name}\t{text}\t{','.join(labels)}")
    with atomic_output(out_dir / "labels.txt") as tmp:
        tmp.write_text("\n".join(KINDS) + "\n", encoding="utf-8")
    manifest = out_dir / "manifest.tsv"
    with atomic_output(manifest) as tmp:
        tmp.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return manifest
