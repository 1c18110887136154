"""NUS-WIDE: original file layout -> `manifest.tsv` + `labels.txt`.

Expected under `raw_dir` (as the NUS LMS archives unpack):

    ImageList/Imagelist.txt            269,648 lines, e.g. `actor\\0001_2124494179.jpg`
                                       (a `C:\\ImageData\\Flickr\\` prefix is tolerated)
    ConceptsList/Concepts81.txt        the 81 concept names
    Groundtruth/AllLabels/Labels_{concept}.txt   one 0/1 a line, Imagelist order
    NUS_WID_Tags/TagList1k.txt         the 1,000 tag names  (protocol "egath")
    NUS_WID_Tags/AllTags1k.txt         one line of 1,000 0/1 values per image (egath)
    NUS_WID_Tags/All_Tags.txt          `<photo id> tag tag ...` per image (protocol "dchmt")
    Flickr/<concept>/<file>.jpg        images from a mirror (or images/<concept>/<file>.jpg,
                                       or images/<file>.jpg)

Protocols:
- "egath" (DCMH/GCDH): the 10 most frequent concepts; keep images with >= 1 of them; the
  text is the image's tags among the 1k tag list (from AllTags1k.txt), so the BoW is the
  1,000-tag indicator. Full data: 186,577 pairs.
- "dchmt": the 21 most frequent concepts, >= 1 of them; the text is the image's raw tags
  from All_Tags.txt. Full data: 195,834 pairs.
Concepts are ranked by their count over all images (ties: Concepts81 order) and written to
`labels.txt` in Concepts81 order. Images whose text is empty (no tag, or no letter or
digit in it) are dropped and counted; `drop_empty_text=False` keeps them with an empty
text, for readers that accept one (DCHMT's 195,834 includes them; whether DCMH's 186,577
does is not documented).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from egath.datasets.download import SOURCES
from egath.datasets.raw import (DatasetError, check_images, find_first, is_empty_text, log_counts,
                               manifest_image_path, require_file, write_manifest)

log = logging.getLogger(__name__)

PROTOCOLS = {"egath": 10, "dchmt": 21}
_HINT = ("Download ImageList.zip, ConceptsList.zip, Groundtruth.zip and NUS_WID_Tags.zip "
         "from " + SOURCES["nuswide"]["homepage"] + " and unpack them in {raw_dir}.")


def _lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _image_rel(line: str) -> tuple[str, str]:
    """`C:\\ImageData\\Flickr\\actor\\0001_2.jpg` or `actor\\0001_2.jpg` -> ('actor', '0001_2.jpg')."""
    parts = [p for p in line.strip().replace("\\", "/").split("/") if p]
    if len(parts) < 2 or not parts[-1].lower().endswith(".jpg"):
        raise ValueError(line)
    return parts[-2], parts[-1]


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
    with open(path, "rb") as f:
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
    lines = _lines(path)
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


def _find_image(roots: list[Path], concept: str, name: str) -> Path | None:
    for r in roots:
        for p in (r / concept / name, r / name):
            if p.is_file():
                return p
    return None


def prepare_nuswide(raw_dir, out_dir, protocol: str = "egath", *, n_labels: int | None = None,
                    allow_missing_images: bool = False, drop_empty_text: bool = True,
                    absolute_paths: bool = False) -> dict:
    """Write `out_dir/manifest.tsv` and `out_dir/labels.txt` for NUS-WIDE.

    `n_labels` overrides the protocol's number of most frequent concepts. Missing images
    stop the run with the list of missing files unless `allow_missing_images`. Image paths
    are relative to `out_dir` (absolute with `absolute_paths`). Returns the counts: read,
    dropped_no_label, dropped_empty_text, dropped_missing_image, kept, empty_text_kept.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {tuple(PROTOCOLS)}, got {protocol!r}")
    k_labels = n_labels or PROTOCOLS[protocol]
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    hint = _HINT.format(raw_dir=raw_dir)

    imagelist = find_first([raw_dir / "ImageList" / "Imagelist.txt", raw_dir / "Imagelist.txt"],
                           "NUS-WIDE ImageList/Imagelist.txt", hint)
    rels = []
    for k, line in enumerate(_lines(imagelist), 1):
        try:
            rels.append(_image_rel(line))
        except ValueError:
            raise DatasetError(f"corrupt {imagelist}: line {k} is {line!r}, expected an image "
                               f"path like actor\\0001_2124494179.jpg") from None
    n = len(rels)
    if n == 0:
        raise DatasetError(f"{imagelist} is empty")

    concepts_file = find_first([raw_dir / "ConceptsList" / "Concepts81.txt",
                                raw_dir / "Concepts81.txt",
                                raw_dir / "Groundtruth" / "Concepts81.txt"],
                               "NUS-WIDE Concepts81.txt", hint)
    concepts = [c.strip() for c in _lines(concepts_file) if c.strip()]
    if k_labels > len(concepts):
        raise DatasetError(f"{concepts_file} lists {len(concepts)} concepts; "
                           f"{k_labels} requested")
    label_dir = find_first([raw_dir / "Groundtruth" / "AllLabels", raw_dir / "AllLabels"],
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

    tag_dir = find_first([raw_dir / "NUS_WID_Tags", raw_dir], "NUS-WIDE NUS_WID_Tags/ folder",
                         hint)
    if protocol == "egath":
        tag_list = require_file(tag_dir / "TagList1k.txt", "NUS-WIDE TagList1k.txt", hint)
        tag_names = [t.strip() for t in _lines(tag_list)]
        texts = _read_tags1k(require_file(tag_dir / "AllTags1k.txt", "NUS-WIDE AllTags1k.txt",
                                          hint), tag_names, n)
    else:
        photo_ids = [name[:-4].split("_", 1)[-1] for _, name in rels]
        texts = _read_all_tags(require_file(tag_dir / "All_Tags.txt", "NUS-WIDE All_Tags.txt",
                                            hint), photo_ids)

    counts = {"read": n, "dropped_no_label": 0, "dropped_empty_text": 0}
    keep = []
    for i in range(n):
        if not Y[i].any():
            counts["dropped_no_label"] += 1
        elif drop_empty_text and is_empty_text(texts[i]):
            counts["dropped_empty_text"] += 1
        else:
            keep.append(i)

    roots = [raw_dir / "Flickr", raw_dir / "images", raw_dir / "Flickr" / "Flickr"]
    found = [_find_image(roots, *rels[i]) for i in keep]
    expected = [p or raw_dir / "Flickr" / rels[i][0] / rels[i][1] for p, i in zip(found, keep)]
    present = check_images(expected, allow_missing_images, "NUS-WIDE",
                           SOURCES["nuswide"]["instructions"].format(raw_dir=raw_dir))
    rows = []
    for i, img, ok in zip(keep, expected, present):
        if ok:
            concept, name = rels[i]
            rows.append((f"{concept}/{name[:-4]}", manifest_image_path(img, out_dir, absolute_paths),
                         texts[i], [c for c, y in zip(chosen, Y[i]) if y]))
    counts["dropped_missing_image"] = len(keep) - len(rows)
    counts["kept"] = write_manifest(out_dir, rows, chosen)
    counts["empty_text_kept"] = sum(1 for r in rows if is_empty_text(r[2]))
    return log_counts(f"NUS-WIDE ({protocol})", counts)
