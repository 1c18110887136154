"""The tiny workflow on a real single-node SLURM cluster (tests/slurm/slurm-local.sh) with two fake GPUs.

Needs root and apt-get (or SLURM already installed) and snakemake-executor-plugin-slurm;
skipped, with the reason, where any of them is missing.
"""
from __future__ import annotations

import csv
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from test_workflow import BITS, TINY_CONFIG, snakemake, write_config

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def slurm_cluster():
    if os.geteuid() != 0:
        pytest.skip("starting a SLURM cluster needs root")
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("snakemake-executor-plugin-slurm is not installed")
    if not (shutil.which("slurmctld") or shutil.which("apt-get")):
        pytest.skip("SLURM is not installed and there is no apt-get to install it")
    script = HERE / "slurm/slurm-local.sh"
    up = subprocess.run([str(script), "up"], capture_output=True, text=True, timeout=600)
    if up.returncode == 3:  # apt-get failed: nothing was started or written
        pytest.skip(up.stderr.strip().splitlines()[-1])
    try:
        assert up.returncode == 0, f"slurm-local.sh up failed:\n{up.stdout}\n{up.stderr}"
        yield
    finally:
        subprocess.run([str(script), "down"], capture_output=True, timeout=60)


def test_workflow_runs_on_slurm_with_one_gpu_per_training_job(slurm_cluster, tmp_path):
    config = write_config(tmp_path / "tiny.yaml", {**TINY_CONFIG, "device": "auto"})
    snakemake(tmp_path, "--profile", str(HERE / "slurm/profile"), config=config)

    with open(tmp_path / "results/tables/map.csv") as f:
        rows = list(csv.DictReader(f))
    means = [r for r in rows if r["seed"] == "mean"]  # and one row per seed
    assert sorted((int(r["bits"]), r["task"]) for r in means) == sorted(
        (b, t) for b in BITS for t in ("i2t", "t2i"))
    assert len(rows) == len(means) * (1 + len(TINY_CONFIG["seeds"]))
    assert all(0 < float(r["map"]) <= 1 for r in rows)

    # egath.devices logs the scheduler's assignment; the two training jobs ran at once on the
    # two-GPU node, so SLURM must have given them different GPUs.
    assigned = {}
    for bits in BITS:
        log = (tmp_path / f"logs/train/tiny/egath/{bits}.log").read_text()
        match = re.search(r"SLURM job (\d+): CUDA_VISIBLE_DEVICES=(\S+)", log)
        assert match, log
        assigned[match.group(1)] = match.group(2)
    assert len(assigned) == 2 and set(assigned.values()) == {"0", "1"}, assigned
