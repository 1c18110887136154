"""A user's own method, added the way docs/methods.md tells: one file and one config line.

The method file is the example printed in docs/methods.md (between the toy.py markers), so the
documentation shows exactly the code this test runs through the real workflow.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from test_workflow import REPO, TINY_CONFIG, planned_jobs, snakemake, write_config

pytestmark = pytest.mark.workflow

BEGIN, END = "<!-- toy.py: begin -->", "<!-- toy.py: end -->"
TOY_MODEL = "methods/toy.py"  # the one config line: methods: {toy: {model: methods/toy.py}}


def toy_source() -> str:
    """The example method file, as docs/methods.md prints it."""
    doc = (REPO / "docs/methods.md").read_text()
    assert doc.count(BEGIN) == 1 and doc.count(END) == 1, "docs/methods.md must hold the toy.py example once"
    block = doc.split(BEGIN)[1].split(END)[0].strip()
    assert block.startswith("```python\n") and block.endswith("\n```")
    return block.removeprefix("```python\n").removesuffix("```")


def toy_config(workdir: Path, methods: dict) -> Path:
    config = {**TINY_CONFIG, "bits": [8], "seeds": [0], "methods": methods}
    return write_config(workdir / "tiny.yaml", config)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("user_method")
    (workdir / "methods").mkdir()
    (workdir / TOY_MODEL).write_text(toy_source())
    config = toy_config(workdir, {"egath": {}, "toy": {"model": TOY_MODEL}})
    snakemake(workdir, "--cores", "2", config=config)
    return workdir, config


def test_a_method_from_a_file_runs_through_the_workflow_to_the_table(toy_run):
    workdir, _ = toy_run
    with open(workdir / "results/tables/map.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["method"] == "toy"]
    assert sorted((r["task"], r["seed"]) for r in rows) == [
        ("i2t", "0"), ("i2t", "mean"), ("t2i", "0"), ("t2i", "mean")]
    for row in rows:
        assert math.isfinite(float(row["map"])) and 0 < float(row["map"]) <= 1
    model = torch.load(workdir / "results/tiny/toy/8/seed0/model.pt", weights_only=False)
    assert model["method_spec"]["model"] == TOY_MODEL
    # the method's own params and its training_defaults (lr 1e-3 over TrainConfig's 1e-4) reached it
    assert model["method_params"] == {"balance_weight": 0.1}
    assert model["config"]["lr"] == 1e-3
    assert model["history"][-1]["epoch"] == 2 and "pairwise" in model["history"][-1]


def test_editing_the_method_file_reruns_only_its_training(toy_run):
    workdir, config = toy_run
    assert "Nothing to be done" in snakemake(workdir, "-n", config=config).stdout
    path = workdir / TOY_MODEL
    path.write_text(path.read_text().replace("balance_weight: float = 0.1", "balance_weight: float = 0.2"))
    plan = snakemake(workdir, "-n", config=config)
    output = plan.stdout + plan.stderr
    assert planned_jobs(plan)["train"] == 1
    assert "method=toy" in output and "method=egath" not in output


@pytest.mark.parametrize("model, says", [
    ("tyo", "unknown method model 'tyo'"),  # a typo of a registered name
    ("methods/missing.py", "no such file 'methods/missing.py'"),
    ("my_package.missing_module", "unknown method model 'my_package.missing_module'"),
])
def test_a_wrong_model_stops_the_dry_run_before_any_job(tmp_path, model, says):
    config = toy_config(tmp_path, {"egath": {}, "toy": {"model": model}})
    result = snakemake(tmp_path, "-n", config=config, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "methods.toy.model" in output and says in output
    assert "Job stats" not in output and not (tmp_path / "results").exists()


def test_a_config_without_egath_shows_the_examples_of_the_methods_it_has(tmp_path):
    (tmp_path / "methods").mkdir()
    (tmp_path / TOY_MODEL).write_text(toy_source())
    config = toy_config(tmp_path, {"toy": {"model": TOY_MODEL}})
    plan = snakemake(tmp_path, "-n", config=config)
    assert planned_jobs(plan)["retrieval_examples"] == 1
    assert "results/figures/examples_tiny_toy_8.png" in plan.stdout
