"""MIRFlickr25K: original archive layout -> `manifest.tsv` + `labels.txt`.

Expected under `raw_dir` (as `mirflickr25k.zip` and `mirflickr25k_annotations_v080.zip`
unpack):

    mirflickr/im{1..25000}.jpg
    mirflickr/meta/tags/tags{i}.txt          one (normalised) tag a line
    mirflickr/doc/common_tags.txt            "tag count" a line: tags used by >= 20 images
    mirflickr25k_annotations_v080/{label}.txt, {label}_r1.txt, README.txt
                                             image numbers, one a line

Protocols:
- "egath" (DCMH/GCDH preprocessing): keep images with >= 1 of the 24 potential labels and
  >= 1 tag that occurs in >= `min_tag_count` (20) images; the text is that image's frequent
  tags, so the bag-of-words vocabulary is the 1,386 tags of `common_tags.txt`.
  Full data: 20,015 pairs.
- "dchmt": keep images with >= 1 of the 24 labels; the text is all the image's tags.
  Images whose tags give no word (none, or punctuation only; tags in any script count, see
  text.EMPTY_TEXT_RULE) are dropped and counted; `drop_empty_text=False` keeps them with an
  empty text (the published 24,581 pairs include them).

Labels are the 24 potential-label files (without `_r1`), in alphabetical order.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from egath.datasets.raw import (DatasetError, check_images, log_counts, manifest_image_path,
                               require_file, require_some_kept, write_manifest)
from egath.datasets.sources import SOURCES, find_member
from egath.datasets.text import is_empty_text, read_lines

log = logging.getLogger(__name__)

MIRFLICKR_LABELS = (
    "animals", "baby", "bird", "car", "clouds", "dog", "female", "flower", "food", "indoor",
    "lake", "male", "night", "people", "plant_life", "portrait", "river", "sea", "sky",
    "structures", "sunset", "transport", "tree", "water",
)
PROTOCOLS = ("egath", "dchmt")
_HINT = SOURCES["mirflickr25k"]["instructions"]


def _read_tags(path: Path) -> list[str]:
    seen: dict[str, None] = {}
    for line in read_lines(path, strict=False):
        tag = line.strip()
        if tag:
            seen.setdefault(tag, None)  # keep file order, drop repeats
    return list(seen)


def _read_annotation(path: Path, valid_ids: set[int]) -> set[int]:
    ids = set()
    for k, line in enumerate(read_lines(path, strict=False), 1):
        s = line.strip()
        if not s:
            continue
        if not s.isdigit():
            raise DatasetError(f"corrupt annotation file {path}: line {k} is {s!r}, "
                               f"expected an image number")
        i = int(s)
        if i not in valid_ids:
            raise DatasetError(f"annotation file {path}: line {k} names image {i}, which has "
                               f"no tags file under mirflickr/meta/tags/")
        ids.add(i)
    return ids


def _frequent_tags(doc: Path, tags: dict[int, list[str]], min_count: int) -> set[str]:
    common = doc / "common_tags.txt"
    if common.is_file():
        out = set()
        for k, line in enumerate(read_lines(common, strict=False), 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or not fields[1].isdigit():
                raise DatasetError(f"corrupt {common}: line {k} is {line!r}, expected "
                                   f"'tag count'")
            if int(fields[1]) >= min_count:
                out.add(fields[0])
        log.info("%d tags with count >= %d in %s", len(out), min_count, common)
        return out
    # Same rule, counted from the tag files themselves.
    df: dict[str, int] = {}
    for ts in tags.values():
        for t in ts:
            df[t] = df.get(t, 0) + 1
    out = {t for t, c in df.items() if c >= min_count}
    log.warning("%s not found; counted %d tags used by >= %d images from meta/tags",
                common, len(out), min_count)
    return out


def prepare_mirflickr25k(raw_dir, out_dir, protocol: str = "egath", *, min_tag_count: int = 20,
                         allow_missing_images: bool = False, drop_empty_text: bool = True,
                         absolute_paths: bool = False) -> dict:
    """Write `out_dir/manifest.tsv` and `out_dir/labels.txt` for MIRFlickr25K.

    Image paths in the manifest are relative to `out_dir` (absolute with `absolute_paths`).
    Returns the counts: read, dropped_no_label, dropped_no_frequent_tag (egath),
    dropped_empty_text, dropped_missing_image, kept, empty_text_kept (included in kept).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    hint = _HINT.format(raw_dir=raw_dir)
    tag_dir = find_member("mirflickr25k", raw_dir, "meta/tags",
                          "MIRFlickr tag folder (mirflickr/meta/tags/)", hint)
    base = tag_dir.parent.parent
    ann_dir = find_member("mirflickr25k", raw_dir, "animals.txt",
                          "MIRFlickr annotation folder (mirflickr25k_annotations_v080/)", hint
                          ).parent

    tags: dict[int, list[str]] = {}
    for p in tag_dir.iterdir():
        m = re.fullmatch(r"tags(\d+)\.txt", p.name)
        if m:
            tags[int(m.group(1))] = _read_tags(p)
    if not tags:
        raise DatasetError(f"no tags{{i}}.txt files in {tag_dir}\n{hint}")
    ids = sorted(tags)
    valid = set(ids)

    found = {p.stem for p in ann_dir.glob("*.txt")
             if not p.stem.endswith("_r1") and p.stem.lower() != "readme"}
    unknown = sorted(found - set(MIRFLICKR_LABELS))
    if unknown:
        log.warning("ignoring unexpected annotation files in %s: %s", ann_dir, unknown)
    members = {}
    for name in MIRFLICKR_LABELS:
        path = require_file(ann_dir / f"{name}.txt", f"MIRFlickr annotation file {name}.txt",
                            hint)
        members[name] = _read_annotation(path, valid)

    frequent = _frequent_tags(base / "doc", tags, min_tag_count) if protocol == "egath" else None

    counts = {"read": len(ids), "dropped_no_label": 0}
    if protocol == "egath":
        counts["dropped_no_frequent_tag"] = 0
    counts["dropped_empty_text"] = 0
    candidates = []
    for i in ids:
        labels = [n for n in MIRFLICKR_LABELS if i in members[n]]
        if not labels:
            counts["dropped_no_label"] += 1
            continue
        words = tags[i] if frequent is None else [t for t in tags[i] if t in frequent]
        if frequent is not None and not words:
            counts["dropped_no_frequent_tag"] += 1
            continue
        text = " ".join(words)
        if drop_empty_text and is_empty_text(text):
            counts["dropped_empty_text"] += 1
            continue
        candidates.append((i, base / f"im{i}.jpg", text, labels))

    present = check_images([c[1] for c in candidates], allow_missing_images, "MIRFlickr25K",
                           f"Expected mirflickr/im{{i}}.jpg under {raw_dir}.\n{hint}")
    rows = [(f"im{i}", manifest_image_path(img, out_dir, absolute_paths), text, labels)
            for (i, img, text, labels), ok in zip(candidates, present) if ok]
    counts["dropped_missing_image"] = len(candidates) - len(rows)
    require_some_kept("MIRFlickr25K", len(rows), counts, hint)
    counts["kept"] = write_manifest(out_dir, rows, MIRFLICKR_LABELS)
    counts["empty_text_kept"] = sum(1 for r in rows if is_empty_text(r[2]))
    return log_counts(f"MIRFlickr25K ({protocol})", counts)
