"""Downloading and unpacking the original dataset archives (listed in sources.SOURCES),
unless their contents are already on disk."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from egath.datasets.raw import DatasetError
from egath.datasets.sources import SOURCES, unpacked_in_place, where_to_put

log = logging.getLogger(__name__)


class DownloadError(RuntimeError):
    """A download failed for good (after retries) or its checksum did not match."""


# --------------------------------------------------------------------------- download

_CHUNK = 1 << 20


def sha256sum(path: str | os.PathLike, chunk: int = _CHUNK) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


class _Transient(Exception):
    """A failure worth retrying (network error, truncated body, 5xx)."""


def _fetch_once(url: str, partial: Path, timeout: float, progress: bool) -> None:
    offset = partial.stat().st_size if partial.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "egath-download/1"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            # The partial is no prefix the server recognises: start over.
            partial.unlink()
            raise _Transient(f"HTTP 416 for range {offset}-; restarting") from e
        if e.code >= 500 or e.code in (408, 429):
            raise _Transient(f"HTTP {e.code}") from e
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise _Transient(str(e)) from e

    with resp:
        status = resp.status
        if offset and status == 206:
            crange = resp.headers.get("Content-Range", "")
            if not crange.startswith(f"bytes {offset}-"):
                partial.unlink()
                raise _Transient(f"unexpected Content-Range {crange!r}; restarting")
            mode = "ab"
            log.info("resuming %s at byte %d", partial.name, offset)
        else:
            # Server ignored the range (200): rewrite from the start.
            mode, offset = "wb", 0
        length = resp.headers.get("Content-Length")
        expected = int(length) if length is not None else None
        total = offset + expected if expected is not None else None
        received = 0
        last_log = time.monotonic()
        try:
            with open(partial, mode) as f:
                while True:
                    block = resp.read(_CHUNK)
                    if not block:
                        break
                    f.write(block)
                    received += len(block)
                    if progress and time.monotonic() - last_log > 10:
                        last_log = time.monotonic()
                        done = offset + received
                        if total:
                            log.info("%s: %.1f%% of %d bytes", partial.name,
                                     100 * done / total, total)
                        else:
                            log.info("%s: %d bytes", partial.name, done)
        except (OSError, ValueError, http.client.HTTPException) as e:  # resets, IncompleteRead
            raise _Transient(f"connection lost after {offset + received} bytes: {e}") from e
        if expected is not None and received < expected:
            raise _Transient(f"body truncated: {received} of {expected} bytes")


def download(url: str, dest: str | os.PathLike, sha256: str | None = None, retries: int = 3,
             timeout: float = 60, progress: bool = True, *, backoff: float = 2.0) -> Path:
    """Download `url` to `dest` and return `dest`.

    The body streams to `dest.partial`, which survives failures so the next attempt (or the
    next call) resumes with an HTTP Range request where the server supports it. Network
    errors, 5xx answers and truncated bodies are retried up to `retries` times, waiting
    `backoff * 2**attempt` seconds. With `sha256`, the finished file is verified before the
    atomic rename onto `dest`; a mismatch deletes the partial and raises DownloadError. An
    existing `dest` is kept when it matches `sha256` (or when no hash is given).
    """
    dest = Path(dest)
    want = sha256.lower() if sha256 else None
    if dest.exists():
        if want is None or sha256sum(dest) == want:
            log.info("%s already present", dest)
            return dest
        log.warning("%s exists but its sha256 differs; downloading again", dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    attempt = 0
    while True:
        try:
            _fetch_once(url, partial, timeout, progress)
            break
        except _Transient as e:
            if attempt >= retries:
                raise DownloadError(
                    f"{url}: giving up after {attempt + 1} attempts ({e}); the partial file "
                    f"{partial} is kept and the next call resumes it") from e
            wait = backoff * 2 ** attempt
            log.warning("%s: %s; retrying in %.1f s", url, e, wait)
            time.sleep(wait)
            attempt += 1
    if want is not None:
        got = sha256sum(partial)
        if got != want:
            partial.unlink()
            raise DownloadError(f"checksum mismatch for {dest.name}: expected sha256 {want}, "
                                f"got {got}; the partial file was removed")
    os.replace(partial, dest)
    log.info("downloaded %s (%d bytes)", dest, dest.stat().st_size)
    return dest


# --------------------------------------------------------------------------- extract

def _safe_target(dest_dir: Path, name: str, archive: Path) -> Path:
    target = (dest_dir / name).resolve()
    if os.path.isabs(name) or ".." in Path(name.replace("\\", "/")).parts or \
            not target.is_relative_to(dest_dir):
        raise DatasetError(f"{archive}: member {name!r} would be written outside {dest_dir}")
    return target


def extract(archive: str | os.PathLike, dest_dir: str | os.PathLike) -> Path:
    """Unpack a .zip, .tar, .tar.gz/.tgz, .tar.bz2 or .tar.xz into `dest_dir`.

    Members with absolute paths, `..` components, links leaving `dest_dir`, or device files
    are refused (DatasetError) before anything is written.
    """
    archive = Path(archive)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    root = dest_dir.resolve()
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                _safe_target(root, info.filename, archive)
            zf.extractall(root)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            for m in members:
                _safe_target(root, m.name, archive)
                if m.issym() or m.islnk():
                    link = m.linkname if m.islnk() else \
                        os.path.join(os.path.dirname(m.name), m.linkname)
                    _safe_target(root, link, archive)
                elif not (m.isfile() or m.isdir()):
                    raise DatasetError(f"{archive}: member {m.name!r} is a special file")
            if hasattr(tarfile, "data_filter"):
                tf.extractall(root, members=members, filter="data")
            else:  # pragma: no cover - Python without extraction filters
                tf.extractall(root, members=members)
    else:
        raise DatasetError(f"{archive}: not a zip or tar archive")
    log.info("extracted %s into %s", archive, dest_dir)
    return dest_dir


def source_key(source: str, protocol: str) -> str:
    """The `SOURCES` entry of a config `source`: COCO's year follows the protocol."""
    if source == "coco":
        return "coco2014" if protocol == "egath" else "coco2017"
    if source not in SOURCES:
        raise ValueError(f"no download source for {source!r}; known: {sorted(SOURCES)}")
    return source


def fetch_dataset(name: str, raw_dir: str | os.PathLike, unpack: bool = True,
                  sources: dict | None = None, **download_kwargs) -> dict[str, str]:
    """Make the files of `SOURCES[name]` available under `raw_dir`; return how each was
    found: "unpacked in place", "archive in place" or "downloaded".

    An archive whose members are already unpacked there (`sources.unpacked_in_place`) is
    neither downloaded nor unpacked; one whose archive is there is unpacked, not fetched.
    Only the others are downloaded; when a download fails (offline), DownloadError says
    where to put each file still missing. Files without a URL (NUS-WIDE's images) are only
    reported, with the instructions of `SOURCES[name]`.
    """
    table = (sources or SOURCES)[name]
    folders = table.get("folders", ("",))
    raw_dir = Path(raw_dir)
    how: dict[str, str] = {}
    needed = []
    for entry in table["files"]:
        if entry["url"] is None:
            log.warning("%s has no download URL:\n%s", entry["name"],
                        table["instructions"].format(raw_dir=raw_dir))
            continue
        found = unpacked_in_place(entry, folders, raw_dir)
        if found:
            how[entry["name"]] = "unpacked in place"
            log.info("%s: its files are in place, so it is neither downloaded nor unpacked: %s",
                     entry["name"], ", ".join(str(p) for p in found))
        else:
            needed.append(entry)
    for k, entry in enumerate(needed):
        archive = raw_dir / entry["name"]
        if archive.exists():  # download() only checks it (and its sha256, when pinned)
            how[entry["name"]] = "archive in place"
        try:
            download(entry["url"], archive, sha256=entry["sha256"], **download_kwargs)
        except DownloadError as e:
            missing = [where_to_put(other, folders, raw_dir) for other in needed[k:]
                       if not (raw_dir / other["name"]).exists()]
            raise DownloadError(f"{e}\nTo use copies you have (or to work offline), for each "
                                f"file still missing:\n- " + "\n- ".join(missing) +
                                "\nThen run again.") from e
        how.setdefault(entry["name"], "downloaded")
        if unpack and entry["extract"]:
            extract(archive, raw_dir)
    return how
