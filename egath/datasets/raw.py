"""What the dataset preparers share: their error, checks of the raw files, and the manifest
they write (docs/formats.md)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable, Sequence

from egath.io import atomic_output

log = logging.getLogger(__name__)


class DatasetError(RuntimeError):
    """Raw dataset files are missing, malformed, or inconsistent."""


def require_file(path: Path, what: str, hint: str = "") -> Path:
    if not path.is_file():
        msg = f"missing {what}: {path}"
        raise DatasetError(msg + (f"\n{hint}" if hint else ""))
    return path


def is_present(path: Path) -> bool:
    """A file, or a folder with something in it (an empty folder holds no unpacked files)."""
    return path.is_file() or (path.is_dir() and any(path.iterdir()))


def first_present(base: Path, relative: Sequence[str]) -> Path | None:
    """The first of `relative` (paths under base) that is present (is_present), else None."""
    return next((base / rel for rel in relative if is_present(base / rel)), None)


def _neighbours(raw_dir: Path) -> list[tuple[Path, str]]:
    """Folders a user may have meant instead of raw_dir: inside it (two levels), then above."""
    inside = sorted(d for d in raw_dir.iterdir() if d.is_dir())
    deeper = sorted(d for folder in inside for d in folder.iterdir() if d.is_dir())
    return ([(d, "one level inside") for d in inside] + [(d, "two levels inside") for d in deeper]
            + [(raw_dir.parent, "the folder above"), (raw_dir.parent.parent, "two folders above")])


def wrong_folder_hint(raw_dir: Path, relative: Sequence[str]) -> str:
    """Why nothing of `relative` is under raw_dir, when that can be told: the folder does not
    exist, or the files are in a folder next to it."""
    if not raw_dir.is_dir():
        return f"The folder {raw_dir} does not exist."
    for base, how in _neighbours(raw_dir.resolve()):
        found = first_present(base, relative)
        if found is not None:
            fix = (f"move its contents into {raw_dir}, or name {base} as the raw folder"
                   if how.endswith("inside") else f"name {base} as the raw folder")
            return f"{found} exists: {base} is {how} {raw_dir}. The files belong directly " \
                   f"in the raw folder: {fix}."
    return ""


def locate(raw_dir: Path, relative: Sequence[str], what: str, hint: str = "") -> Path:
    """The first of `relative` (paths under raw_dir) that is present; else DatasetError naming
    every place looked at, and where the files are when raw_dir is the wrong folder."""
    found = first_present(raw_dir, relative)
    if found is not None:
        return found
    notes = [n for n in (wrong_folder_hint(raw_dir, relative), hint) if n]
    raise DatasetError(f"missing {what}; looked for:\n  " +
                       "\n  ".join(str(raw_dir / rel) for rel in relative) +
                       "".join(f"\n{n}" for n in notes))


def clean_text(text: str) -> str:
    """One line, no tabs: the manifest's text column."""
    return " ".join(text.split())


SHOWN = 10  # how many of a list of unusable images a message names


def report_unusable(images: Sequence[str], total: int, problem: str, allow: bool, dataset: str,
                    instructions: str) -> None:
    """Stop on images that cannot be used (DatasetError naming their count and the first
    SHOWN), or with `allow` log the same as a warning: they are dropped, never silently."""
    if not images:
        return
    shown = "\n  ".join(str(i) for i in images[:SHOWN])
    head = (f"{dataset}: {len(images)} of {total} images {problem}; the first "
            f"{min(SHOWN, len(images))}:\n  {shown}")
    if not allow:
        raise DatasetError(
            f"{head}\n{instructions}\nOr set allow_missing_images (`allow_missing_images: true` "
            f"in the dataset's config, or allow_missing_images=True) to drop these samples; "
            f"the pair count then falls below the protocol's.")
    log.warning("%s\nThese samples are dropped (allow_missing_images).", head)


def require_some_kept(dataset: str, n_kept: int, counts: dict, instructions: str) -> None:
    """Zero pairs is never a dataset, whatever allow_missing_images says: stop, with what
    was dropped and why."""
    if n_kept:
        return
    dropped = ", ".join(f"{k}={v}" for k, v in counts.items() if k.startswith("dropped_") and v)
    raise DatasetError(
        f"{dataset}: none of the {counts['read']} samples read is kept ({dropped}). "
        f"allow_missing_images drops the samples whose image is missing, but an empty set is "
        f"an error, not a dataset.\n{instructions}")


def check_images(paths: Sequence[Path], allow_missing: bool, dataset: str,
                 instructions: str) -> list[bool]:
    """Return a present/missing flag per path; raise DatasetError on any missing image
    unless `allow_missing`."""
    present = [p.is_file() for p in paths]
    missing = [p for p, ok in zip(paths, present) if not ok]
    report_unusable(missing, len(paths), "are missing", allow_missing, dataset, instructions)
    return present


def manifest_image_path(image: Path, out_dir: Path, absolute: bool) -> str:
    if absolute:
        return str(Path(os.path.abspath(image)))
    return os.path.relpath(os.path.abspath(image), os.path.abspath(out_dir)).replace(os.sep, "/")


def write_manifest(out_dir: str | os.PathLike, rows: Iterable[tuple[str, str, str, Sequence[str]]],
                   label_names: Sequence[str]) -> int:
    """Write `manifest.tsv` (id, image, text, labels) and `labels.txt`; return the row count.

    Each file appears whole or not at all.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in label_names:
        if not name or any(c in name for c in ",\t\n"):
            raise DatasetError(f"label name {name!r} cannot be written to a manifest")
    n = 0
    with atomic_output(out_dir / "manifest.tsv") as tmp, \
            open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write("id\timage\ttext\tlabels\n")
        for sid, image, text, labels in rows:
            f.write(f"{sid}\t{image}\t{clean_text(text)}\t{','.join(labels)}\n")
            n += 1
    with atomic_output(out_dir / "labels.txt") as tmp:
        tmp.write_text("".join(f"{x}\n" for x in label_names), encoding="utf-8")
    return n


def log_counts(dataset: str, counts: dict) -> dict:
    parts = ", ".join(f"{k}={v}" for k, v in counts.items())
    log.info("%s: %s", dataset, parts)
    dropped = sum(v for k, v in counts.items() if k.startswith("dropped_"))
    assert counts["read"] == counts["kept"] + dropped, counts
    return counts
