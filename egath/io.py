"""Small file helpers shared by every stage: atomic writes and HDF5 reading with clear errors."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import h5py


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it into place only if the block succeeds.

    A crash or an exception leaves no half-written file at `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def open_h5(path: str | os.PathLike, required: tuple[str, ...] = ()) -> h5py.File:
    """Open an HDF5 file for reading; name the file and the missing keys when it is not usable."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise OSError(f"{path}: not a readable HDF5 file (truncated or corrupt?): {e}") from e
    missing = [key for key in required if key not in f]
    if missing:
        f.close()
        raise KeyError(f"{path}: missing datasets {missing}")
    return f


def string_array(values) -> "list[str]":
    """Decode an HDF5 string dataset into Python strings."""
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]
