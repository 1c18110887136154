"""Logging for workflow jobs: everything a job prints goes to its log file and to the terminal."""
from __future__ import annotations

import logging
import sys
from pathlib import Path


class _Tee:
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for stream in self.streams:
            stream.write(text)
            stream.flush()
        return len(text)

    def flush(self):
        for stream in self.streams:
            stream.flush()

    def isatty(self):
        return False


def setup_logging(log_path: str | Path | None = None, level: int = logging.INFO) -> None:
    """Send stderr (log records, progress bars, warnings) to `log_path` as well as the terminal."""
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        sys.stderr = _Tee(open(log_path, "w", buffering=1), sys.__stderr__)
    logging.basicConfig(stream=sys.stderr, level=level, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)
