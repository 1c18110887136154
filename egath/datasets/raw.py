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


def find_first(candidates: Iterable[Path], what: str, hint: str = "") -> Path:
    cands = list(candidates)
    for c in cands:
        if c.exists():
            return c
    raise DatasetError(f"missing {what}; looked for:\n  " +
                       "\n  ".join(str(c) for c in cands) + (f"\n{hint}" if hint else ""))


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
