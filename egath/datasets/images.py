"""Image files of a raw dataset copy: finding them wherever a copy put them, and spotting
files that many images share (a web host's "photo unavailable" stand-in)."""
from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from pathlib import Path
from typing import Sequence

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip", ".rar", ".7z")
# Identical bytes behind at least this many images mark a placeholder. NUS-WIDE's
# Imagelist.txt names a photo at most twice (six photo ids twice: iTomxy/data,
# nuswide/check.duplication.py), so one file may rightly serve two images; behind ten it is
# no photo. A judgement, not a fact: fewer copies of a placeholder go unnoticed.
PLACEHOLDER_MIN_COPIES = 10


def walk_images(root: Path) -> list[Path]:
    """Every image file under `root`, in sorted path order. Symlinked folders are followed
    (copies are often linked in), each real folder once."""
    found, seen = [], set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link back up the tree, or a second link to the same copy
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        found += [Path(folder, f) for f in sorted(files) if f.lower().endswith(IMAGE_SUFFIXES)]
    return found


def find_archives(root: Path, skip: set[str]) -> list[Path]:
    """Archives under `root` (symlinked folders not followed), but those named in `skip`:
    a copy of the images may still be packed."""
    return [Path(folder, f) for folder, dirs, files in sorted(os.walk(root))
            for f in sorted(files) if f.lower().endswith(ARCHIVE_SUFFIXES) and f not in skip]


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def shared_content(paths: Sequence[Path], min_copies: int = PLACEHOLDER_MIN_COPIES
                   ) -> dict[str, list[int]]:
    """{sha256: indices into `paths`} for every content that at least `min_copies` of the
    paths hold. Only files whose size that many files share are read, so a copy of real
    photos costs one stat per file."""
    by_size: dict[int, list[int]] = defaultdict(list)
    for i, path in enumerate(paths):
        by_size[path.stat().st_size].append(i)
    by_digest: dict[str, list[int]] = defaultdict(list)
    for group in by_size.values():
        if len(group) >= min_copies:
            for i in group:
                by_digest[_sha256(paths[i])].append(i)
    return {d: group for d, group in sorted(by_digest.items()) if len(group) >= min_copies}
