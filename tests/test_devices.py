"""GPU claiming: concurrent jobs on fake GPUs, killed holders, SLURM's assignment, no GPU."""
from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from egath import devices

REPO = Path(__file__).resolve().parents[1]

# A job that claims a GPU (argv[1]: gpu_slots), prints what CUDA will see, and holds it until
# its stdin closes.
HOLDER = """
import logging, os, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from egath.devices import claim_gpu
claim_gpu(poll_s=0.1, gpu_slots=int(sys.argv[1]))
print(os.environ["CUDA_VISIBLE_DEVICES"], flush=True)
sys.stdin.read()
"""


@pytest.fixture
def start_job(tmp_path):
    jobs = []

    def start(n_gpus: int, gpu_slots: int = 1) -> subprocess.Popen:
        env = {**os.environ, "EGATH_FAKE_GPUS": str(n_gpus), "EGATH_GPU_LOCK_DIR": str(tmp_path / "locks"),
               "PYTHONPATH": str(REPO)}
        env.pop("CUDA_VISIBLE_DEVICES", None)
        job = subprocess.Popen([sys.executable, "-c", HOLDER, str(gpu_slots)], env=env, text=True, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=open(tmp_path / f"job{len(jobs)}.log", "w"))
        jobs.append(job)
        return job

    yield start
    for job in jobs:
        job.kill()
        job.wait()


def gpu_of(job: subprocess.Popen, timeout: float = 20) -> str | None:
    """The GPU the job claimed, or None if it has claimed none within `timeout` seconds."""
    ready, _, _ = select.select([job.stdout], [], [], timeout)
    return job.stdout.readline().strip() if ready else None


def test_concurrent_jobs_never_share_a_gpu_and_a_third_waits(start_job, tmp_path):
    first, second = start_job(2), start_job(2)
    held = {gpu_of(first): first, gpu_of(second): second}
    assert set(held) == {"0", "1"}
    third = start_job(2)
    assert gpu_of(third, timeout=3) is None  # both held: it waits rather than fall back to the CPU
    assert "waiting" in (tmp_path / "job2.log").read_text()
    held["1"].stdin.close()  # the job on GPU 1 ends normally
    assert gpu_of(third) == "1"


def test_gpu_slots_let_jobs_share_a_gpu_and_a_third_waits(start_job, tmp_path):
    first, second = start_job(1, gpu_slots=2), start_job(1, gpu_slots=2)
    assert gpu_of(first) == gpu_of(second) == "0"  # both on the one GPU
    third = start_job(1, gpu_slots=2)
    assert gpu_of(third, timeout=3) is None  # both slots held: it waits
    assert "(2 per GPU): waiting" in (tmp_path / "job2.log").read_text()
    first.stdin.close()
    assert gpu_of(third) == "0"  # it takes the slot that was freed


def test_jobs_spread_over_gpus_before_sharing_one(start_job):
    jobs = [start_job(2, gpu_slots=2) for _ in range(2)]
    assert sorted(gpu_of(job) for job in jobs) == ["0", "1"]
    jobs += [start_job(2, gpu_slots=2) for _ in range(2)]
    assert sorted(gpu_of(job) for job in jobs[2:]) == ["0", "1"]


@pytest.mark.parametrize("slots", [0, -1, 1.5, True, "2"])
def test_gpu_slots_must_be_a_positive_integer(slots, tmp_path):
    with pytest.raises(ValueError, match="gpu_slots must be an integer >= 1"):
        devices.claim_gpu(["0"], lock_dir=tmp_path, gpu_slots=slots)


def test_a_killed_job_frees_its_gpu(start_job):
    holder = start_job(1)
    assert gpu_of(holder) == "0"
    waiter = start_job(1)
    assert gpu_of(waiter, timeout=3) is None
    holder.send_signal(signal.SIGKILL)
    assert gpu_of(waiter) == "0"


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """This process as a new job: no GPU held, no SLURM, locks under tmp_path."""
    monkeypatch.setattr(devices, "_held", None)
    monkeypatch.setenv("EGATH_GPU_LOCK_DIR", str(tmp_path / "locks"))
    for name in ("SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_slurm_assignment_is_left_alone(fresh, tmp_path, caplog):
    fresh.setenv("SLURM_JOB_ID", "42")
    fresh.setenv("CUDA_VISIBLE_DEVICES", "1")
    fresh.setenv("EGATH_FAKE_GPUS", "2")
    with caplog.at_level(logging.INFO, logger="egath.devices"):
        devices.select_device("auto")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    assert not (tmp_path / "locks").exists()
    assert "SLURM job 42: CUDA_VISIBLE_DEVICES=1" in caplog.text


def test_no_gpu_falls_back_to_the_cpu_and_says_so(fresh, caplog):
    fresh.setenv("EGATH_FAKE_GPUS", "0")
    with caplog.at_level(logging.INFO, logger="egath.devices"):
        assert devices.select_device("auto") == "cpu"
    assert "no GPU found: running on the CPU" in caplog.text
    with pytest.raises(RuntimeError, match="cuda was asked for"):
        devices.select_device("cuda")
    assert devices.select_device("cpu") == "cpu"
