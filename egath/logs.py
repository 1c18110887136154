"""Logging for workflow jobs: everything a job prints goes to its log file and to the terminal.

On the terminal each line carries the job's name (from its log path, e.g. `[train/tiny/egath/16]`),
so the lines of jobs that run side by side can be told apart. In the log file a progress bar's
redraws (carriage returns, ten a second) become one line every PROGRESS_SECONDS and its last
state, instead of thousands of updates on one line.
"""
from __future__ import annotations

import atexit
import logging
import re
import sys
import time
import warnings
from pathlib import Path

PROGRESS_SECONDS = 10.0  # how often a progress bar's state is written to a log file as a line


class _LogFile:
    """A text stream that writes whole lines; of the redraws of one line (text followed by a
    carriage return) it keeps one every PROGRESS_SECONDS."""

    def __init__(self, stream, interval: float = PROGRESS_SECONDS, clock=time.monotonic):
        self.stream, self.interval, self.clock = stream, interval, clock
        self.line = ""
        self.last_progress = -float("inf")

    def write(self, text: str) -> None:
        for part in re.split(r"(\r|\n)", text):
            if part == "\n":
                self.stream.write(self.line + "\n")
                self.line = ""
            elif part == "\r":
                if self.line.strip() and self.clock() - self.last_progress >= self.interval:
                    self.stream.write(self.line + "\n")
                    self.last_progress = self.clock()
                self.line = ""
            else:
                self.line += part

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        if self.line.strip():
            self.stream.write(self.line + "\n")
            self.line = ""
        self.stream.flush()


class _Labelled:
    """A text stream that starts every line (after a newline or a carriage return) with a label."""

    def __init__(self, stream, label: str):
        self.stream, self.label = stream, label
        self.at_line_start = True

    def write(self, text: str) -> None:
        out = []
        for part in re.split(r"(\r|\n)", text):
            if part in ("\r", "\n"):
                self.at_line_start = True
            elif part:
                if self.at_line_start:
                    out.append(self.label)
                    self.at_line_start = False
            out.append(part)
        self.stream.write("".join(out))

    def flush(self) -> None:
        self.stream.flush()


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


def job_label(log_path) -> str:
    """`logs/train/tiny/egath/16.log` -> `train/tiny/egath/16` (the part after `logs/`)."""
    parts = Path(log_path).with_suffix("").parts
    if "logs" in parts[:-1]:
        parts = parts[len(parts) - 1 - parts[::-1].index("logs") + 1:]
    return "/".join(parts)


def quiet_library_warnings() -> None:
    """torch_geometric calls torch.jit.script when it is imported, which torch deprecates with a
    FutureWarning: library internals, nothing a user can act on, at the top of every log."""
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated",
                            category=FutureWarning)


def setup_logging(log_path: str | Path | None = None, level: int = logging.INFO) -> logging.Logger:
    """Send stderr (log records, progress bars, warnings) to `log_path` as well as the terminal.

    Returns the job's logger, for the one line a job that has nothing else to say writes of what
    it did.
    """
    quiet_library_warnings()
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        log_file = _LogFile(open(log_path, "w", buffering=1, encoding="utf-8"))
        terminal = _Labelled(sys.__stderr__, f"[{job_label(log_path)}] ")
        sys.stderr = _Tee(log_file, terminal)
        atexit.register(log_file.close)  # the last state of a bar left without a newline
    logging.basicConfig(stream=sys.stderr, level=level, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)
    return logging.getLogger("egath.job")
