"""Job logs (egath.logs): progress bars as periodic lines in the file, the job's name on the
terminal, no library FutureWarning at the top."""
import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from egath.logs import _Labelled, _LogFile, job_label

REPO = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_redraws_become_one_line_per_interval():
    out, clock = io.StringIO(), Clock()
    log = _LogFile(out, interval=10, clock=clock)
    log.write("start\n")
    for i in range(101):  # a bar redrawn every 0.5 s for 50 s
        clock.now = 0.5 * i
        log.write(f"\rbar {i}%")
    log.write("\n")
    log.write("done\n")
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0] == "start" and lines[-2:] == ["bar 100%", "done"]
    # a line about every 10 s of the 50: bar 0 at t=0.5 is the first state written
    assert 4 <= len(lines) - 3 <= 6


def test_bar_left_without_newline_is_written_on_close():
    out = io.StringIO()
    log = _LogFile(out, interval=10, clock=Clock())
    log.write("\rbar 1%\rbar 2%")
    log.close()
    assert out.getvalue() == "bar 1%\nbar 2%\n"


def test_terminal_lines_carry_the_job_label():
    out = io.StringIO()
    term = _Labelled(out, "[train/tiny/egath/8] ")
    term.write("one\ntw")
    term.write("o\n\rbar 1%\rbar 2%\n")
    assert out.getvalue() == ("[train/tiny/egath/8] one\n[train/tiny/egath/8] two\n"
                              "\r[train/tiny/egath/8] bar 1%\r[train/tiny/egath/8] bar 2%\n")
    assert job_label("logs/train/tiny/egath/8.log") == "train/tiny/egath/8"
    assert job_label("/w/logs/x/logs/tables.log") == "tables"


def test_a_job_log_has_no_library_warning_and_few_progress_lines(tmp_path):
    """A real job: torch_geometric imported, a tqdm bar of 2,000 updates, one closing line."""
    script = textwrap.dedent(f"""
        from egath.logs import setup_logging
        log = setup_logging({str(tmp_path / "logs/demo/job.log")!r})
        import sys
        import torch_geometric.nn
        from tqdm import tqdm
        for _ in tqdm(range(2000), file=sys.stderr, mininterval=0):
            pass
        log.info("wrote nothing (a test)")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "logs/demo/job.log").read_text()
    assert "FutureWarning" not in text and "FutureWarning" not in result.stderr
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) <= 4 and "2000/2000" in lines[-2] and lines[-1].endswith("wrote nothing (a test)")
    terminal = [line for line in result.stderr.replace("\r", "\n").splitlines() if line]
    assert terminal and all(line.startswith("[demo/job] ") for line in terminal)
