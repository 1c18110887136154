"""MS-COCO: original file layout -> `manifest.tsv` + `labels.txt`.

Expected under `raw_dir` (as cocodataset.org's archives unpack):

    annotations/instances_{train,val}{year}.json   keys images, annotations, categories
    annotations/captions_{train,val}{year}.json    keys images, annotations (with caption)
    {train,val}{year}/<file_name>                  the images named in the json

Protocols:
- "egath": COCO 2014 train+val, images with >= 1 instance annotation, the 80 categories.
  Full data: 122,218 pairs.
- "dchmt": the same rule on COCO 2017 train+val (the same images; also 122,218).
Labels are the category names ordered by category id. The text joins all of the image's
captions (ordered by caption id) for "egath", which is what a bag-of-words over captions
uses; "dchmt" keeps the first caption (`captions="all"|"first"` overrides this).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from egath.datasets.raw import (DatasetError, check_images, clean_text, log_counts,
                               manifest_image_path, require_some_kept, write_manifest)
from egath.datasets.sources import SOURCES, find_member
from egath.datasets.text import is_empty_text

log = logging.getLogger(__name__)

PROTOCOLS = {"egath": 2014, "dchmt": 2017}
SPLITS = ("train", "val")


def _load_json(raw_dir: Path, year: int, name: str, keys: tuple[str, ...], hint: str) -> dict:
    path = find_member(f"coco{year}", raw_dir, name, f"COCO annotation file {name}", hint)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"corrupt COCO annotation file {path}: {e}") from e
    missing = [k for k in keys if not isinstance(data, dict) or k not in data]
    if missing:
        raise DatasetError(f"corrupt COCO annotation file {path}: missing key(s) {missing}")
    return data


def prepare_coco(raw_dir, out_dir, protocol: str = "egath", *, captions: str | None = None,
                 allow_missing_images: bool = False, absolute_paths: bool = False) -> dict:
    """Write `out_dir/manifest.tsv` and `out_dir/labels.txt` for MS-COCO.

    Image paths are relative to `out_dir` (absolute with `absolute_paths`). Returns the
    counts: read, dropped_no_instance, dropped_no_caption, dropped_missing_image, kept.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {tuple(PROTOCOLS)}, got {protocol!r}")
    captions = captions or ("all" if protocol == "egath" else "first")
    if captions not in ("all", "first"):
        raise ValueError(f"captions must be 'all' or 'first', got {captions!r}")
    year = PROTOCOLS[protocol]
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    hint = SOURCES[f"coco{year}"]["instructions"].format(raw_dir=raw_dir)

    categories: dict[int, str] | None = None
    samples = []  # (stem, image path, category ids, caption list)
    for split in SPLITS:
        inst = _load_json(raw_dir, year, f"instances_{split}{year}.json",
                          ("images", "annotations", "categories"), hint)
        caps = _load_json(raw_dir, year, f"captions_{split}{year}.json", ("images", "annotations"),
                          hint)
        try:
            cats = {int(c["id"]): str(c["name"]) for c in inst["categories"]}
            labels: dict[int, set[int]] = {}
            for a in inst["annotations"]:
                labels.setdefault(int(a["image_id"]), set()).add(int(a["category_id"]))
            texts: dict[int, list[tuple[int, str]]] = {}
            for a in caps["annotations"]:
                texts.setdefault(int(a["image_id"]), []).append((int(a["id"]), a["caption"]))
            images = sorted((int(im["id"]), str(im["file_name"])) for im in inst["images"])
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"corrupt COCO annotations for {split}{year}: an entry lacks "
                               f"or mangles {e}") from e
        if categories is None:
            categories = cats
        elif cats != categories:
            raise DatasetError(f"instances_{split}{year}.json lists other categories than "
                               f"instances_train{year}.json")
        unknown = {c for s in labels.values() for c in s} - set(cats)
        if unknown:
            raise DatasetError(f"instances_{split}{year}.json: annotations use unknown "
                               f"category ids {sorted(unknown)[:5]}")
        for image_id, file_name in images:
            caps_i = [clean_text(t) for _, t in sorted(texts.get(image_id, []))]
            samples.append((image_id, raw_dir / f"{split}{year}" / file_name,
                            labels.get(image_id, set()),
                            [t for t in caps_i if not is_empty_text(t)]))

    cat_ids = sorted(categories)
    names = [categories[c] for c in cat_ids]
    seen = set()
    counts = {"read": len(samples), "dropped_no_instance": 0, "dropped_no_caption": 0}
    candidates = []
    for image_id, img, cats_i, caps_i in samples:
        if image_id in seen:
            raise DatasetError(f"COCO image id {image_id} appears twice in train/val {year}")
        seen.add(image_id)
        if not cats_i:
            counts["dropped_no_instance"] += 1
        elif not caps_i:
            counts["dropped_no_caption"] += 1
        else:
            text = " ".join(caps_i) if captions == "all" else caps_i[0]
            candidates.append((img.stem, img, text, [categories[c] for c in cat_ids
                                                     if c in cats_i]))
    present = check_images([c[1] for c in candidates], allow_missing_images,
                           f"MS-COCO {year}", hint)
    rows = [(sid, manifest_image_path(img, out_dir, absolute_paths), text, labels)
            for (sid, img, text, labels), ok in zip(candidates, present) if ok]
    counts["dropped_missing_image"] = len(candidates) - len(rows)
    require_some_kept(f"MS-COCO {year}", len(rows), counts, hint)
    counts["kept"] = write_manifest(out_dir, rows, names)
    return log_counts(f"MS-COCO {year} ({protocol})", counts)
