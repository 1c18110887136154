"""The first stage of a two-step method (rule first_stage) in real Snakemake runs: planned before the
training and tuning that read it, kept when only the second step's settings change, rerun with
what reads it when its own settings change, and resumed after a kill with --rerun-incomplete."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from egath.first_stage import run_first_stage
from test_workflow import TINY_CONFIG, kill_job_once_written, planned_jobs, snakemake, write_config

pytestmark = pytest.mark.workflow

TRANSFORM = {"long_bits": 16, "epochs": 20}
TWO_STEP = {**TINY_CONFIG, "bits": [8], "seeds": [0],
            "methods": {"twdh": {"params": {"transform": TRANSFORM}}, "egath": {"tune": False}},
            "tuning": {"enabled": True, "trials": 2, "epochs": 1, "n_validation": 12}}
CELL = "results/tiny/twdh/8"
REPORTS = {"tables": 1, "retrieval_examples": 1, "tuning_table": 1, "figures": 1, "loss_curves": 1, "all": 1}


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("two_step")
    config = write_config(workdir / "two_step.yaml", TWO_STEP)
    plan = snakemake(workdir, "-n", config=config)
    snakemake(workdir, "--cores", "2", config=config)
    return workdir, plan


def with_twdh(**entry) -> dict:
    return {**TWO_STEP, "methods": {**TWO_STEP["methods"], "twdh": entry}}


def job_blocks(plan, rule: str) -> list[str]:
    """The planned jobs of `rule`, each from its "rule" line to the next job's."""
    jobs = re.split(r"\n(?=(?:local)?rule \w+:)", plan.stdout + plan.stderr)
    return [job for job in jobs if job.startswith(f"rule {rule}:")]


def test_the_first_stage_runs_once_before_the_jobs_that_read_it(two_step_run):
    _, plan = two_step_run
    jobs = planned_jobs(plan)
    assert jobs["first_stage"] == 1 and jobs["tune"] == 1 and jobs["train"] == 2
    (first,) = job_blocks(plan, "first_stage")
    assert f"output: {CELL}/first_stage.pt" in first
    (tune,) = job_blocks(plan, "tune")
    assert f"{CELL}/first_stage.pt" in tune
    trains = job_blocks(plan, "train")
    assert [f"{CELL}/first_stage.pt" in b for b in trains if "results/tiny/twdh/" in b] == [True]
    assert not any("first_stage.pt" in b for b in trains if "results/tiny/egath/" in b)


def test_the_training_and_tuning_read_the_first_stages_output(two_step_run):
    workdir, _ = two_step_run
    record = torch.load(workdir / CELL / "first_stage.pt", weights_only=True)
    assert (record["model"], record["bits"], record["dataset"]) == ("twdh", 8, "tiny")
    assert record["settings"]["long_bits"] == 16 and record["settings"]["epochs"] == 20
    assert record["tensors"]["transform"].shape == (32, 16)
    model = torch.load(workdir / CELL / "seed0/model.pt", weights_only=False)
    assert torch.equal(model["state_dict"]["transform"], record["tensors"]["transform"])
    assert model["method_params"]["transform"] == record["settings"]
    assert (workdir / CELL / "tuning.json").exists()
    log = (workdir / "logs/first_stage/tiny/twdh/8.log").read_text()
    assert "transform epoch 1/20" in log and "first stage written to" in log
    assert (workdir / "results/benchmarks/first_stage/tiny/twdh/8.tsv").exists()
    assert not list((workdir / "results").rglob("*.ckpt"))


def copy_of(workdir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy, symlinks=True)
    return copy


def codes_of(workdir: Path) -> np.ndarray:
    with h5py.File(workdir / CELL / "seed0/codes.h5") as f:
        return f["database/image"][:]


def test_a_change_of_the_second_steps_settings_keeps_the_first_stage(two_step_run, tmp_path):
    workdir = copy_of(two_step_run[0], tmp_path)
    config = write_config(tmp_path / "second.yaml", with_twdh(params={"transform": TRANSFORM, "quan_alpha": 0.05}))
    plan = snakemake(workdir, "-n", config=config)
    assert planned_jobs(plan) == {"tune": 1, "train": 1, **REPORTS}
    stage = workdir / CELL / "first_stage.pt"
    before, old_model = stage.stat().st_mtime_ns, torch.load(workdir / CELL / "seed0/model.pt", weights_only=False)
    snakemake(workdir, "--cores", "2", config=config)
    assert stage.stat().st_mtime_ns == before
    model = torch.load(workdir / CELL / "seed0/model.pt", weights_only=False)
    assert model["method_params"]["quan_alpha"] == 0.05  # trained anew, with the same transform
    assert torch.equal(model["state_dict"]["transform"], old_model["state_dict"]["transform"])
    assert not torch.equal(model["state_dict"]["image_net.fc.weight"], old_model["state_dict"]["image_net.fc.weight"])


def test_a_change_of_the_first_steps_settings_reruns_it_and_what_reads_it(two_step_run, tmp_path):
    original = two_step_run[0]
    workdir = copy_of(original, tmp_path)
    config = write_config(tmp_path / "first.yaml", with_twdh(params={"transform": {**TRANSFORM, "seed": 1}}))
    plan = snakemake(workdir, "-n", config=config)
    assert planned_jobs(plan) == {"first_stage": 1, "tune": 1, "train": 1, **REPORTS}
    assert re.search(r"params have changed since last execution:\s+first_stage", plan.stdout + plan.stderr)
    assert not any("results/tiny/egath/" in b for b in job_blocks(plan, "train"))
    egath = workdir / "results/tiny/egath/8/seed0/model.pt"
    egath_before = egath.stat().st_mtime_ns
    snakemake(workdir, "--cores", "2", config=config)
    old = torch.load(original / CELL / "first_stage.pt", weights_only=True)
    new = torch.load(workdir / CELL / "first_stage.pt", weights_only=True)
    assert new["settings"]["seed"] == 1
    for name in ("long_centers", "transform"):  # made anew from the other seed
        assert not torch.equal(new["tensors"][name], old["tensors"][name]), name
    model = torch.load(workdir / CELL / "seed0/model.pt", weights_only=False)
    assert torch.equal(model["state_dict"]["transform"], new["tensors"]["transform"])
    assert not np.array_equal(codes_of(workdir), codes_of(original))  # the results changed, not only the plan
    assert egath.stat().st_mtime_ns == egath_before


def test_a_killed_first_stage_resumes_with_rerun_incomplete(tmp_path):
    """SIGKILL of the first-stage job after a checkpoint; the rerun resumes from that epoch and ends
    with the output of an uninterrupted run; no half-written output is left in between."""
    epochs = 1500
    transform = {"long_bits": 16, "epochs": epochs, "stop_when_lossless": False}
    config = write_config(tmp_path / "kill.yaml", with_twdh(params={"transform": transform}))
    target, out = f"{CELL}/first_stage.pt", tmp_path / CELL / "first_stage.pt"
    ckpt = Path(f"{out}.ckpt")
    kill_job_once_written(tmp_path, config, "first_stage.py", ckpt, target)
    assert not out.exists()
    done = torch.load(ckpt, weights_only=False)["state"]["epoch"]
    assert 1 <= done < epochs

    snakemake(tmp_path, "--cores", "1", "--rerun-incomplete", target, config=config)
    log = (tmp_path / "logs/first_stage/tiny/twdh/8.log").read_text()
    assert f"resuming the first stage from {target}.ckpt after epoch {done}" in log
    ran = [int(m) for m in re.findall(rf"transform epoch (\d+)/{epochs}", log)]
    assert ran == list(range(done + 1, epochs + 1))  # only the epochs left, each once
    assert not ckpt.exists()
    resumed = torch.load(out, weights_only=True)
    uninterrupted = run_first_stage(tmp_path / "results/tiny/pairs.h5",
                                    tmp_path / "results/tiny/features/egath-tiny-vit_none.h5", tmp_path / "again.pt",
                                    "twdh", 8, {"params": {"transform": transform}})
    for name, tensor in uninterrupted["tensors"].items():
        assert torch.equal(resumed["tensors"][name], tensor), name
    assert resumed["summary"] == uninterrupted["summary"]
