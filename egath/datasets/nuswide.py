"""NUS-WIDE: the official files and a copy of the images -> `manifest.tsv` + `labels.txt`.

The official files, under `raw_dir` or a `NUS-WIDE/`, `nuswide/`, `NUS_WIDE/` or
`Low-Level-Features/` folder in it (sources.SOURCES["nuswide"]), each in its folder or flat
(as the archives unpack):

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
    3. photo_id        its Flickr photo id: a file named by it alone, e.g. 2124494179.jpg, or
                       holding it as the second `_` field, e.g. 27863_2124494179_90ee058136_m.jpg
A link is also indexed under its target's name, so links named by row of Imagelist.txt
(images/0.jpg -> Flickr/actor/0001_2124494179.jpg) are found; files (not links) named by row
are not used, and named, since nothing tells whether they count from 0 or 1. The log gives
the count found by each rule; missing images are named (count and the first ten), with the
archives under `raw_dir` that may still hold them. Files whose bytes at least
PLACEHOLDER_MIN_COPIES images share are Flickr's "photo unavailable" stand-in, saved by some
copies instead of deleted photos: they count as missing. Missing images stop the run unless
`allow_missing_images`, which drops them (counted); no image at all always stops it.

Protocols (counts: iTomxy/data, nuswide/make.clean.py, matching DCMH's released sets):
- "egath" (DCMH/GCDH TC-10): the 10 most frequent concepts; keep images with >= 1 of them;
  the text is the image's tags among the 1k tag list (from AllTags1k.txt), so the BoW is the
  1,000-tag indicator. Full data: 186,577 pairs.
- "dchmt" (TC-21): the 21 most frequent concepts, >= 1 of them; the text is the image's raw
  tags from All_Tags.txt. Full data: 195,834 pairs.
Both counts include the images whose text is empty; they are kept (an all-zero BoW row when
the text gives no word). `drop_empty_text=True` drops and counts the images with none of the
1,000 tags of TagList1k.txt (for "dchmt": none of their All_Tags.txt tags is listed there),
the rule of make.clean.py with make.text.py, giving 181,365 and 190,421 on the full data.
Concepts are ranked by their count over all images (ties: Concepts81 order) and written to
`labels.txt` in Concepts81 order.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from egath.datasets.images import (PLACEHOLDER_MIN_COPIES, find_archives, shared_content,
                                   walk_images)
from egath.datasets.raw import (SHOWN, DatasetError, log_counts, manifest_image_path,
                               report_unusable, require_file, require_some_kept, write_manifest)
from egath.datasets.sources import SOURCES, find_member
from egath.datasets.text import is_empty_text, read_lines

log = logging.getLogger(__name__)

PROTOCOLS = {"egath": 10, "dchmt": 21}
IMAGE_RULES = ("imagelist_path", "file_name", "photo_id")
IMAGELIST_LINES = 269_648  # the official Imagelist.txt, and each AllLabels/Labels_*.txt
_HINT = ("Download ImageList.zip, ConceptsList.zip, Groundtruth.zip and NUS_WID_Tags.zip "
         "from " + SOURCES["nuswide"]["homepage"] + " and unpack them in {raw_dir}.")


def photo_id(file_name: str) -> str | None:
    """The Flickr photo id in an image file name: the whole name when it is a number
    (2124494179.jpg), else its second `_` field when all digits (0001_2124494179.jpg,
    27863_2124494179_90ee058136_m.jpg)."""
    fields = file_name.rsplit(".", 1)[0].split("_")
    if len(fields) == 1:
        return fields[0] if fields[0].isdigit() else None
    return fields[1] if fields[1].isdigit() else None


def _entry(line: str) -> tuple[str, str]:
    """`C:\\ImageData\\Flickr\\actor\\0001_2.jpg` or `actor\\0001_2.jpg` -> ('actor', '0001_2.jpg')."""
    parts = [p for p in line.strip().replace("\\", "/").split("/") if p]
    if len(parts) < 2 or not parts[-1].lower().endswith(".jpg") or not photo_id(parts[-1]):
        raise ValueError(line)
    return parts[-2], parts[-1]


def _describe(entry: tuple[str, str]) -> str:
    return f"{entry[0]}\\{entry[1]} (photo {photo_id(entry[1])})"


def _content_lines(path: Path) -> list[str]:
    """The lines of an official text file, without the blank lines at its end."""
    lines = read_lines(path, strict=False)
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _read_label_column(path: Path, n: int, imagelist: Path, label_files: list[Path]
                       ) -> np.ndarray:
    tokens = path.read_bytes().split()
    if len(tokens) != n:
        lengths = {len(f.read_bytes().split()) for f in label_files if f.is_file()}
        if lengths == {len(tokens)}:  # every label file agrees: the list is the odd one out
            raise DatasetError(
                f"{imagelist} has {n} lines, but each of the {len(label_files)} label files in "
                f"{path.parent} has {len(tokens)} values (the official Imagelist.txt has "
                f"{IMAGELIST_LINES:,} lines, one per value): {imagelist.name} is truncated "
                f"or from another copy")
        raise DatasetError(f"corrupt label file {path}: {len(tokens)} values, expected {n} "
                           f"(one per line of {imagelist})")
    col = np.array(tokens)
    ok = (col == b"0") | (col == b"1")
    if not ok.all():
        k = int(np.argmin(ok))
        raise DatasetError(f"corrupt label file {path}: line {k + 1} is {tokens[k]!r}, "
                           f"expected 0 or 1")
    return col == b"1"


def _read_tag_list(path: Path) -> list[str]:
    tags = _content_lines(path)
    blank = next((k for k, tag in enumerate(tags, 1) if not tag.strip()), None)
    if blank:
        raise DatasetError(f"corrupt {path}: line {blank} is blank, expected one tag a line")
    return [tag.strip() for tag in tags]


def _read_tags1k(path: Path, tag_list: Path, n: int) -> list[str]:
    names = np.array(_read_tag_list(tag_list), dtype=object)
    v = len(names)
    texts = []
    with open(path, "rb") as f:  # 540 MB of 0/1 digits: bytes, line by line
        for k, line in enumerate(f, 1):
            if k > n:
                if line.strip():
                    raise DatasetError(f"corrupt {path}: more than {n} lines (Imagelist.txt "
                                       f"has {n})")
                continue
            digits = line.translate(None, b" \t\r\n,")
            if len(digits) != v:
                raise DatasetError(f"corrupt {path}: line {k} holds {len(digits)} values, but "
                                   f"{tag_list} lists {v} tags")
            if digits.strip(b"01"):
                raise DatasetError(f"corrupt {path}: line {k} holds values other than 0 and 1")
            row = np.frombuffer(digits, dtype=np.uint8) == ord("1")
            texts.append(" ".join(names[row]))
    if len(texts) != n:
        raise DatasetError(f"corrupt {path}: {len(texts)} lines, expected {n}")
    return texts


def _read_all_tags(path: Path, photo_ids: list[str]) -> list[str]:
    lines = _content_lines(path)
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


@dataclass
class _ImageIndex:
    """The image files under raw_dir, by the keys of IMAGE_RULES."""
    n_files: int = 0
    by_path: dict[tuple[str, str], Path] = field(default_factory=dict)
    by_name: dict[str, Path] = field(default_factory=dict)
    by_photo: dict[str, Path] = field(default_factory=dict)
    files_of_photo: dict[str, set] = field(default_factory=lambda: defaultdict(set))
    numbered_by_row: list[Path] = field(default_factory=list)  # not used: see _index_images

    def add(self, name: Path, file: Path, real: str) -> None:
        """`file` under the keys of `name` (itself, or the target of the link `file`)."""
        self.by_path.setdefault((name.parent.name, name.name), file)
        self.by_name.setdefault(name.name, file)
        pid = photo_id(name.name)
        if pid:
            self.by_photo.setdefault(pid, file)
            self.files_of_photo[pid].add(real)


def _index_images(raw_dir: Path, listed_ids: set[str]) -> _ImageIndex:
    """Every image file under raw_dir (sorted, so the first of a key wins), by its name, and
    a link also by the name of its target. A folder whose files are mostly named by a number
    that is no photo id of Imagelist.txt is taken for one numbered by row (images/0.jpg):
    its files are not matched by photo id, since whether they count from 0 or 1 cannot be
    told; its links still are, by their targets."""
    files = walk_images(raw_dir)
    numbered = defaultdict(list)
    for f in files:
        if f.stem.isdigit():
            numbered[f.parent].append(f)
    by_row = {f for group in numbered.values()
              if 2 * sum(f.stem not in listed_ids for f in group) > len(group) for f in group}
    index = _ImageIndex(n_files=len(files))
    real_folder: dict[Path, str] = {}
    for f in files:
        target = Path(os.path.realpath(f)) if f.is_symlink() else None
        if target is not None and not target.is_file():
            continue  # a broken link
        real = str(target) if target else os.path.join(
            real_folder.setdefault(f.parent, os.path.realpath(f.parent)), f.name)
        if f not in by_row:
            index.add(f, f, real)
        if target is not None:
            index.add(target, f, real)
        elif f in by_row:
            index.numbered_by_row.append(f)
    return index


def _numbered_note(files: list[Path]) -> str:
    folders = sorted({str(f.parent) for f in files})
    return (f"{len(files)} image files (e.g. {files[0]}) in {', '.join(folders)} are named by "
            f"a number that is no Flickr photo id of Imagelist.txt: numbered by row of "
            f"Imagelist.txt? Such files cannot be matched safely (counted from 0 or from 1?) "
            f"and are not used. Make them links to the images named as in Imagelist.txt "
            f"(links are matched by their target), or use the copy they were made from.")


def _locate_images(raw_dir: Path, entries: list[tuple[str, str]], listed_ids: set[str]
                   ) -> tuple[list[Path | None], Counter, _ImageIndex]:
    """Each entry's image file by the first matching IMAGE_RULES rule (None: not found),
    how many each rule found, and the index of the files."""
    index = _index_images(raw_dir, listed_ids)
    found: list[Path | None] = []
    by_rule: Counter = Counter({rule: 0 for rule in IMAGE_RULES})
    shared_ids = []
    for entry in entries:
        pid = photo_id(entry[1])
        for rule, path in zip(IMAGE_RULES, (index.by_path.get(entry), index.by_name.get(entry[1]),
                                            index.by_photo.get(pid))):
            if path is not None:
                by_rule[rule] += 1
                if rule == "photo_id" and len(index.files_of_photo[pid]) > 1:
                    shared_ids.append(pid)
                break
        found.append(path)
    log.info("NUS-WIDE images: %d image files under %s; of the %d images needed, found %s; "
             "%d not found", index.n_files, raw_dir, len(entries),
             ", ".join(f"{n} by {rule}" for rule, n in by_rule.items()),
             sum(p is None for p in found))
    if shared_ids:
        ids = list(dict.fromkeys(shared_ids))  # an id Imagelist.txt lists twice: named once
        log.warning("NUS-WIDE: %d images were found by a photo id that several files carry; "
                    "the first file in path order was used (%d photo ids: %s)", len(shared_ids),
                    len(ids), ", ".join(ids[:SHOWN]))
    if index.numbered_by_row:
        log.warning("NUS-WIDE: %s", _numbered_note(index.numbered_by_row))
    return found, by_rule, index


def _missing_images_help(raw_dir: Path, index: _ImageIndex) -> str:
    """What may explain missing images, then where images go."""
    notes = [_numbered_note(index.numbered_by_row)] if index.numbered_by_row else []
    official = {entry["name"] for entry in SOURCES["nuswide"]["files"]}
    packed = find_archives(raw_dir, official)
    if packed:
        notes.append(f"Still packed under {raw_dir}: " +
                     ", ".join(f"{p} ({p.stat().st_size:,} bytes)" for p in packed) +
                     f". Images inside an archive are not read: unpack it in {raw_dir} "
                     f"(e.g. tar -xf {packed[0]} -C {raw_dir}, or unzip for a .zip).")
    notes.append(SOURCES["nuswide"]["instructions"].format(raw_dir=raw_dir))
    return "\n".join(notes)


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
    placeholder images stop the run, naming them, unless `allow_missing_images`; no image
    at all always does. Image paths are relative to `out_dir` (absolute with
    `absolute_paths`). Returns the counts: read, dropped_no_label, dropped_empty_text,
    dropped_missing_image, dropped_placeholder_image, kept, empty_text_kept (included in
    kept), and images_by_<rule> for each IMAGE_RULES rule.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {tuple(PROTOCOLS)}, got {protocol!r}")
    k_labels = n_labels or PROTOCOLS[protocol]
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    hint = _HINT.format(raw_dir=raw_dir)

    def official(member: str) -> Path:
        return find_member("nuswide", raw_dir, member, f"NUS-WIDE {member}", hint)

    imagelist = official("Imagelist.txt")
    entries = []
    for k, line in enumerate(_content_lines(imagelist), 1):
        try:
            entries.append(_entry(line))
        except ValueError:
            raise DatasetError(f"corrupt {imagelist}: line {k} is {line!r}, expected an image "
                               f"path like actor\\0001_2124494179.jpg") from None
    n = len(entries)
    if n == 0:
        raise DatasetError(f"{imagelist} is empty")
    if n != IMAGELIST_LINES:
        log.info("NUS-WIDE: %s has %d lines; the official one has %d", imagelist, n,
                 IMAGELIST_LINES)

    concepts_file = official("Concepts81.txt")
    concepts = [c.strip() for c in read_lines(concepts_file, strict=False) if c.strip()]
    if k_labels > len(concepts):
        raise DatasetError(f"{concepts_file} lists {len(concepts)} concepts; "
                           f"{k_labels} requested")
    label_dir = official("AllLabels/")
    label_files = [label_dir / f"Labels_{c}.txt" for c in concepts]
    columns = {}
    for c, path in zip(concepts, label_files):
        require_file(path, f"NUS-WIDE label file Labels_{c}.txt", hint)
        columns[c] = _read_label_column(path, n, imagelist, label_files)
    freq = {c: int(columns[c].sum()) for c in concepts}
    order = sorted(range(len(concepts)), key=lambda j: (-freq[concepts[j]], j))
    chosen = [concepts[j] for j in sorted(order[:k_labels])]
    log.info("NUS-WIDE: %d most frequent concepts: %s", k_labels,
             ", ".join(f"{c} ({freq[c]})" for c in chosen))
    Y = np.stack([columns[c] for c in chosen], axis=1)  # (n, k)

    if protocol == "egath":
        texts = _read_tags1k(official("AllTags1k.txt"), official("TagList1k.txt"), n)
        has_listed_tag = [bool(t) for t in texts]  # the text is the image's listed tags
    else:
        texts = _read_all_tags(official("All_Tags.txt"), [photo_id(name) for _, name in entries])
        if drop_empty_text:
            listed = set(_read_tag_list(official("TagList1k.txt")))
            has_listed_tag = [any(tag in listed for tag in t.split()) for t in texts]

    counts = {"read": n, "dropped_no_label": 0, "dropped_empty_text": 0}
    keep = []
    for i in range(n):
        if not Y[i].any():
            counts["dropped_no_label"] += 1
        elif drop_empty_text and not has_listed_tag[i]:
            counts["dropped_empty_text"] += 1
        else:
            keep.append(i)

    images, by_rule, index = _locate_images(raw_dir, [entries[i] for i in keep],
                                            {photo_id(name) for _, name in entries})
    missing = [_describe(entries[i]) for i, p in zip(keep, images) if p is None]
    instructions = (_missing_images_help(raw_dir, index) if missing else
                    SOURCES["nuswide"]["instructions"].format(raw_dir=raw_dir))
    report_unusable(missing, len(keep), "are missing", allow_missing_images, "NUS-WIDE",
                    instructions)
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
    counts["dropped_missing_image"] = len(missing)
    counts["dropped_placeholder_image"] = len(placeholders)
    require_some_kept(f"NUS-WIDE ({protocol})", len(rows), counts, instructions)
    counts["kept"] = write_manifest(out_dir, rows, chosen)
    counts["empty_text_kept"] = sum(1 for r in rows if is_empty_text(r[2]))
    counts.update({f"images_by_{rule}": by_rule[rule] for rule in IMAGE_RULES})
    return log_counts(f"NUS-WIDE ({protocol})", counts)
