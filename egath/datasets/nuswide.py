"""NUS-WIDE: the official files and a copy of the images -> `manifest.tsv` + `labels.txt`.

The official files, under `raw_dir` or a `NUS-WIDE/`, `nuswide/`, `NUS_WIDE/` or
`Low-Level-Features/` folder in it, each in its folder or flat (as the archives unpack):

    ImageList/Imagelist.txt   or Imagelist.txt      269,648 lines, e.g. `actor\\0001_2124494179.jpg`
                                                    (a `C:\\ImageData\\Flickr\\` prefix is tolerated)
    ConceptsList/Concepts81.txt or Concepts81.txt   the 81 concept names
    Groundtruth/AllLabels/ or AllLabels/            Labels_{concept}.txt, one 0/1 a line
    NUS_WID_Tags/ or flat: TagList1k.txt, AllTags1k.txt (protocol "egath"), All_Tags.txt ("dchmt")

Images: NUS gives them out on request, and copies name them differently, so every image file
under `raw_dir` (symlinked folders followed) is indexed, and each image of Imagelist.txt is
found by the first rule that matches:
    1. imagelist_path  its Imagelist path `<folder>/<file>`, e.g. Flickr/actor/0001_2124494179.jpg
    2. file_name       its Imagelist file name in any folder, e.g. images/0001_2124494179.jpg
    3. photo_id        its Flickr photo id as the second `_` field of a file name, e.g.
                       27863_2124494179_90ee058136_m.jpg (copies named after Flickr's URLs)
The log gives the count found by each rule; missing images are named (count and the first
ten). Files whose bytes at least PLACEHOLDER_MIN_COPIES images share are Flickr's "photo
unavailable" stand-in, saved by some copies instead of deleted photos: they count as missing.
Missing images stop the run unless `allow_missing_images`, which drops them (counted).

Protocols (counts: iTomxy/data, nuswide/make.clean.py, matching DCMH's released sets):
- "egath" (DCMH/GCDH TC-10): the 10 most frequent concepts; keep images with >= 1 of them;
  the text is the image's tags among the 1k tag list (from AllTags1k.txt), so the BoW is the
  1,000-tag indicator. Full data: 186,577 pairs.
- "dchmt" (TC-21): the 21 most frequent concepts, >= 1 of them; the text is the image's raw
  tags from All_Tags.txt. Full data: 195,834 pairs.
Both counts include the images whose text is empty (no tag, or no word: text.EMPTY_TEXT_RULE);
they are kept with an empty text (an all-zero BoW row). `drop_empty_text=True` drops and
counts them instead, giving 181,365 and 190,421 on the full data.
Concepts are ranked by their count over all images (ties: Concepts81 order) and written to
`labels.txt` in Concepts81 order.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np

from egath.datasets.download import SOURCES
from egath.datasets.images import PLACEHOLDER_MIN_COPIES, shared_content, walk_images
from egath.datasets.raw import (SHOWN, DatasetError, find_first, log_counts, manifest_image_path,
                               report_unusable, require_file, write_manifest)
from egath.datasets.text import is_empty_text, read_lines

log = logging.getLogger(__name__)

PROTOCOLS = {"egath": 10, "dchmt": 21}
IMAGE_RULES = ("imagelist_path", "file_name", "photo_id")
# Folders that copies of the official files unpack into (a mirror's `NUS-WIDE/`; DCHMT's
# make_nuswide.py reads `Low-Level-Features/` and `nuswide/`), searched after raw_dir itself.
_COPY_FOLDERS = ("NUS-WIDE", "nuswide", "NUS_WIDE", "Low-Level-Features")
_HINT = ("Download ImageList.zip, ConceptsList.zip, Groundtruth.zip and NUS_WID_Tags.zip "
         "from " + SOURCES["nuswide"]["homepage"] + " and unpack them in {raw_dir}.")


def photo_id(file_name: str) -> str | None:
    """The Flickr photo id in an image file name: its second `_` field, when all digits."""
    fields = file_name.rsplit(".", 1)[0].split("_")
    return fields[1] if len(fields) >= 2 and fields[1].isdigit() else None


def _entry(line: str) -> tuple[str, str]:
    """`C:\\ImageData\\Flickr\\actor\\0001_2.jpg` or `actor\\0001_2.jpg` -> ('actor', '0001_2.jpg')."""
    parts = [p for p in line.strip().replace("\\", "/").split("/") if p]
    if len(parts) < 2 or not parts[-1].lower().endswith(".jpg") or not photo_id(parts[-1]):
        raise ValueError(line)
    return parts[-2], parts[-1]


def _describe(entry: tuple[str, str]) -> str:
    return f"{entry[0]}\\{entry[1]} (photo {photo_id(entry[1])})"


def _find(bases: list[Path], names: list[str], what: str, hint: str) -> Path:
    return find_first([base / name for base in bases for name in names], what, hint)


def _read_label_column(path: Path, n: int) -> np.ndarray:
    tokens = path.read_bytes().split()
    if len(tokens) != n:
        raise DatasetError(f"corrupt label file {path}: {len(tokens)} values, expected {n} "
                           f"(one per line of Imagelist.txt)")
    col = np.array(tokens)
    ok = (col == b"0") | (col == b"1")
    if not ok.all():
        k = int(np.argmin(ok))
        raise DatasetError(f"corrupt label file {path}: line {k + 1} is {tokens[k]!r}, "
                           f"expected 0 or 1")
    return col == b"1"


def _read_tags1k(path: Path, tag_names: list[str], n: int) -> list[str]:
    names = np.array(tag_names, dtype=object)
    v = len(tag_names)
    texts = []
    with open(path, "rb") as f:  # 540 MB of 0/1 digits: bytes, line by line
        for k, line in enumerate(f, 1):
            if k > n:
                if line.strip():
                    raise DatasetError(f"corrupt {path}: more than {n} lines (Imagelist.txt "
                                       f"has {n})")
                continue
            digits = line.translate(None, b" \t\r\n,")
            if len(digits) != v or digits.strip(b"01"):
                raise DatasetError(f"corrupt {path}: line {k} does not hold {v} values 0/1")
            row = np.frombuffer(digits, dtype=np.uint8) == ord("1")
            texts.append(" ".join(names[row]))
    if len(texts) != n:
        raise DatasetError(f"corrupt {path}: {len(texts)} lines, expected {n}")
    return texts


def _read_all_tags(path: Path, photo_ids: list[str]) -> list[str]:
    lines = read_lines(path, strict=False)
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) != len(photo_ids):
        raise DatasetError(f"corrupt {path}: {len(lines)} lines, expected {len(photo_ids)}")
    texts = []
    for k, (line, pid) in enumerate(zip(lines, photo_ids), 1):
        fields = line.split()
        if not fields or fields[0] != pid:
            raise DatasetError(f"{path}: line {k} starts with {fields[:1]}, but line {k} of "
                               f"Imagelist.txt is photo {pid}; the files are out of step")
        texts.append(" ".join(fields[1:]))
    return texts


def _locate_images(raw_dir: Path, entries: list[tuple[str, str]]
                   ) -> tuple[list[Path | None], Counter]:
    """Each entry's image file by the first matching IMAGE_RULES rule (None: not found),
    and how many each rule found."""
    by_path: dict[tuple[str, str], Path] = {}
    by_name: dict[str, Path] = {}
    by_photo: dict[str, Path] = {}
    files_per_photo: Counter = Counter()
    files = walk_images(raw_dir)
    for f in files:  # sorted, so the first file of a name or photo id wins
        by_path.setdefault((f.parent.name, f.name), f)
        by_name.setdefault(f.name, f)
        pid = photo_id(f.name)
        if pid:
            by_photo.setdefault(pid, f)
            files_per_photo[pid] += 1
    found: list[Path | None] = []
    by_rule: Counter = Counter({rule: 0 for rule in IMAGE_RULES})
    shared_ids = []
    for entry in entries:
        pid = photo_id(entry[1])
        for rule, path in zip(IMAGE_RULES, (by_path.get(entry), by_name.get(entry[1]),
                                            by_photo.get(pid))):
            if path is not None:
                by_rule[rule] += 1
                if rule == "photo_id" and files_per_photo[pid] > 1:
                    shared_ids.append(pid)
                break
        found.append(path)
    log.info("NUS-WIDE images: %d image files under %s; of the %d images needed, found %s; "
             "%d not found", len(files), raw_dir, len(entries),
             ", ".join(f"{n} by {rule}" for rule, n in by_rule.items()),
             sum(p is None for p in found))
    if shared_ids:
        log.warning("NUS-WIDE: %d images were found by a photo id that several files carry; "
                    "the first file in path order was used (photo ids %s)", len(shared_ids),
                    ", ".join(shared_ids[:SHOWN]))
    return found, by_rule


def _find_placeholders(paths: list[Path | None]) -> list[int]:
    """Indices of `paths` whose file is one that at least PLACEHOLDER_MIN_COPIES share."""
    present = [k for k, p in enumerate(paths) if p is not None]
    placeholders = []
    for digest, members in shared_content([paths[k] for k in present]).items():
        first = paths[present[members[0]]]
        log.warning("NUS-WIDE: %d images are the same %d-byte file (sha256 %s, e.g. %s): a "
                    "placeholder, not a photo", len(members), first.stat().st_size, digest, first)
        placeholders += [present[m] for m in members]
    return sorted(placeholders)


def prepare_nuswide(raw_dir, out_dir, protocol: str = "egath", *, n_labels: int | None = None,
                    allow_missing_images: bool = False, drop_empty_text: bool = False,
                    absolute_paths: bool = False) -> dict:
    """Write `out_dir/manifest.tsv` and `out_dir/labels.txt` for NUS-WIDE.

    `n_labels` overrides the protocol's number of most frequent concepts. Missing and
    placeholder images stop the run, naming them, unless `allow_missing_images`. Image paths
    are relative to `out_dir` (absolute with `absolute_paths`). Returns the counts: read,
    dropped_no_label, dropped_empty_text, dropped_missing_image, dropped_placeholder_image,
    kept, empty_text_kept (included in kept), and images_by_<rule> for each IMAGE_RULES rule.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {tuple(PROTOCOLS)}, got {protocol!r}")
    k_labels = n_labels or PROTOCOLS[protocol]
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    hint = _HINT.format(raw_dir=raw_dir)
    bases = [raw_dir] + [raw_dir / d for d in _COPY_FOLDERS if (raw_dir / d).is_dir()]

    imagelist = _find(bases, ["ImageList/Imagelist.txt", "Imagelist.txt"],
                      "NUS-WIDE ImageList/Imagelist.txt", hint)
    lines = read_lines(imagelist, strict=False)
    while lines and not lines[-1].strip():
        lines.pop()
    entries = []
    for k, line in enumerate(lines, 1):
        try:
            entries.append(_entry(line))
        except ValueError:
            raise DatasetError(f"corrupt {imagelist}: line {k} is {line!r}, expected an image "
                               f"path like actor\\0001_2124494179.jpg") from None
    n = len(entries)
    if n == 0:
        raise DatasetError(f"{imagelist} is empty")

    concepts_file = _find(bases, ["ConceptsList/Concepts81.txt", "Concepts81.txt",
                                  "Groundtruth/Concepts81.txt"], "NUS-WIDE Concepts81.txt", hint)
    concepts = [c.strip() for c in read_lines(concepts_file, strict=False) if c.strip()]
    if k_labels > len(concepts):
        raise DatasetError(f"{concepts_file} lists {len(concepts)} concepts; "
                           f"{k_labels} requested")
    label_dir = _find(bases, ["Groundtruth/AllLabels", "AllLabels"],
                      "NUS-WIDE Groundtruth/AllLabels/ folder", hint)
    columns = {}
    for c in concepts:
        path = require_file(label_dir / f"Labels_{c}.txt", f"NUS-WIDE label file Labels_{c}.txt",
                            hint)
        columns[c] = _read_label_column(path, n)
    freq = {c: int(columns[c].sum()) for c in concepts}
    order = sorted(range(len(concepts)), key=lambda j: (-freq[concepts[j]], j))
    chosen = [concepts[j] for j in sorted(order[:k_labels])]
    log.info("NUS-WIDE: %d most frequent concepts: %s", k_labels,
             ", ".join(f"{c} ({freq[c]})" for c in chosen))
    Y = np.stack([columns[c] for c in chosen], axis=1)  # (n, k)

    if protocol == "egath":
        tag_list = _find(bases, ["NUS_WID_Tags/TagList1k.txt", "TagList1k.txt"],
                         "NUS-WIDE TagList1k.txt", hint)
        tag_names = [t.strip() for t in read_lines(tag_list, strict=False)]
        texts = _read_tags1k(_find(bases, ["NUS_WID_Tags/AllTags1k.txt", "AllTags1k.txt"],
                                   "NUS-WIDE AllTags1k.txt", hint), tag_names, n)
    else:
        texts = _read_all_tags(_find(bases, ["NUS_WID_Tags/All_Tags.txt", "All_Tags.txt"],
                                     "NUS-WIDE All_Tags.txt", hint),
                               [photo_id(name) for _, name in entries])

    counts = {"read": n, "dropped_no_label": 0, "dropped_empty_text": 0}
    keep = []
    for i in range(n):
        if not Y[i].any():
            counts["dropped_no_label"] += 1
        elif drop_empty_text and is_empty_text(texts[i]):
            counts["dropped_empty_text"] += 1
        else:
            keep.append(i)

    images, by_rule = _locate_images(raw_dir, [entries[i] for i in keep])
    instructions = SOURCES["nuswide"]["instructions"].format(raw_dir=raw_dir)
    report_unusable([_describe(entries[i]) for i, p in zip(keep, images) if p is None],
                    len(keep), "are missing", allow_missing_images, "NUS-WIDE", instructions)
    placeholders = _find_placeholders(images)
    listed = [f"{_describe(entries[keep[k]])}: {images[k]}" for k in placeholders]
    report_unusable(listed, len(keep),
                    f"are placeholders (one file that >= {PLACEHOLDER_MIN_COPIES} images share, "
                    f"like Flickr's 'photo unavailable' image), not photos",
                    allow_missing_images, "NUS-WIDE",
                    "The copy saved a stand-in for photos deleted from Flickr; get these images "
                    "from another copy.\n" + instructions)
    if listed:
        log.info("NUS-WIDE: all %d placeholder images:\n  %s", len(listed), "\n  ".join(listed))
    unusable = set(placeholders)
    rows = []
    for k, (i, img) in enumerate(zip(keep, images)):
        if img is not None and k not in unusable:
            folder, name = entries[i]
            rows.append((f"{folder}/{name[:-4]}", manifest_image_path(img, out_dir, absolute_paths),
                         texts[i], [c for c, y in zip(chosen, Y[i]) if y]))
    counts["dropped_missing_image"] = sum(p is None for p in images)
    counts["dropped_placeholder_image"] = len(placeholders)
    counts["kept"] = write_manifest(out_dir, rows, chosen)
    counts["empty_text_kept"] = sum(1 for r in rows if is_empty_text(r[2]))
    counts.update({f"images_by_{rule}": by_rule[rule] for rule in IMAGE_RULES})
    return log_counts(f"NUS-WIDE ({protocol})", counts)
