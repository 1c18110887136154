"""The tuning stage in real Snakemake runs: planned before training, applied to it, rerun when its
budget changes and nothing else, and only for a method that is added."""
from __future__ import annotations

import csv
import json
import re

import pytest

from test_workflow import TINY_CONFIG, planned_jobs, snakemake, write_config

pytestmark = pytest.mark.workflow

TUNED = {**TINY_CONFIG, "bits": [8], "seeds": [0],
         "methods": {"egath": {}, "egath-g": {"tune": False}},
         "tuning": {"enabled": True, "trials": 2, "epochs": 1, "n_validation": 12}}
REPORTS = {"tables": 1, "tuning_table": 1, "figures": 1, "loss_curves": 1, "retrieval_examples": 1, "all": 1}


@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tuned")
    config = write_config(workdir / "tuned.yaml", TUNED)
    plan = snakemake(workdir, "-n", config=config)
    snakemake(workdir, "--cores", "2", config=config)
    return workdir, plan


def test_the_plan_tunes_before_it_trains(tuned_run):
    _, plan = tuned_run
    jobs = planned_jobs(plan)
    assert jobs["tune"] == 1 and jobs["train"] == 2  # egath-g is not tuned
    blocks = (plan.stdout + plan.stderr).split("\n\n")
    train = next(b for b in blocks if "rule train:" in b and "results/tiny/egath/8/seed0" in b)
    assert "results/tiny/egath/8/tuning.json" in train  # the training job waits for its tuning


def test_the_seeds_train_with_the_best_values_and_say_so(tuned_run):
    workdir, _ = tuned_run
    tuning = json.loads((workdir / "results/tiny/egath/8/tuning.json").read_text())
    assert len(tuning["trials"]) == 2 and tuning["budget"]["n_validation"] == 12
    metrics = json.loads((workdir / "results/tiny/egath/8/seed0/metrics.json").read_text())
    assert metrics["protocol"]["tuning"].startswith("tuned: ") and "best of 2 trials x 1 epochs" in metrics["protocol"]["tuning"]
    untuned = json.loads((workdir / "results/tiny/egath-g/8/seed0/metrics.json").read_text())
    assert untuned["protocol"]["tuning"] == "not tuned"
    import torch

    model = torch.load(workdir / "results/tiny/egath/8/seed0/model.pt", weights_only=False)
    for key, value in tuning["best"]["settings"].items():
        assert model["config"][key] == pytest.approx(value)
    with open(workdir / "results/tables/tuning.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert (row["method"], row["trials"]) == ("egath", "2")
    assert float(row["tuned_validation_map"]) == pytest.approx(tuning["best"]["validation_map"], abs=1e-4)
    with open(workdir / "results/tables/map.csv") as f:
        assert {r["method"]: r["tuning"][:5] for r in csv.DictReader(f)} == {"egath": "tuned", "egath-g": "not t"}


def test_an_added_method_tunes_only_itself(tuned_run, tmp_path):
    workdir, _ = tuned_run
    config = write_config(tmp_path / "added.yaml", {**TUNED, "methods": {**TUNED["methods"], "dsph": {}}})
    plan = snakemake(workdir, "-n", config=config)
    output = plan.stdout + plan.stderr
    # egath's codes are as they were: its retrieval examples stand, dsph's are new
    assert planned_jobs(plan) == {"tune": 1, "train": 1, **REPORTS}
    assert "output: results/figures/examples_tiny_dsph_8.png" in output
    assert "output: results/figures/examples_tiny_egath_8.png" not in output
    assert "output: results/tiny/dsph/8/tuning.json" in output
    assert "output: results/tiny/egath/8/tuning.json" not in output
    egath = workdir / "results/tiny/egath/8/tuning.json"
    before = egath.stat().st_mtime_ns
    snakemake(workdir, "--cores", "2", config=config)
    assert len(json.loads((workdir / "results/tiny/dsph/8/tuning.json").read_text())["trials"]) == 2
    assert egath.stat().st_mtime_ns == before


def test_a_new_budget_reruns_tuning_and_training_and_nothing_else(tuned_run, tmp_path):
    workdir, _ = tuned_run
    config = write_config(tmp_path / "budget.yaml", {**TUNED, "tuning": {**TUNED["tuning"], "trials": 3}})
    plan = snakemake(workdir, "-n", config=config)
    assert planned_jobs(plan) == {"tune": 1, "train": 1, **REPORTS}
    assert re.search(r"params have changed since last execution:\s+tune", plan.stdout + plan.stderr)
    before = {p: p.stat().st_mtime_ns for p in (workdir / "results/tiny").glob("*.h5")}
    snakemake(workdir, "--cores", "2", config=config)
    tuning = json.loads((workdir / "results/tiny/egath/8/tuning.json").read_text())
    assert len(tuning["trials"]) == 3  # computed anew, not only planned
    metrics = json.loads((workdir / "results/tiny/egath/8/seed0/metrics.json").read_text())
    assert "best of 3 trials" in metrics["protocol"]["tuning"]
    assert {p: p.stat().st_mtime_ns for p in before} == before  # pairs, features, graph untouched
