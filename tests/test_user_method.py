"""A user's own method, added the way docs/methods.md tells: one file and one config line.

The method file is the example printed in docs/methods.md (between the toy.py markers), so the
documentation shows exactly the code this test runs through the real workflow.
"""
from __future__ import annotations

import csv
import math
import shutil
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


TOY_LOSS = 'terms["total"] = terms["pairwise"] + balance_weight * terms["balance"]'
DOUBLED_LOSS = TOY_LOSS.replace('terms["pairwise"]', '2 * terms["pairwise"]')


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


def test_an_edited_method_retrains_and_an_edited_comment_reruns_nothing(toy_run, tmp_path):
    """The documented example: change the loss of methods/toy.py and run again."""
    workdir, config = toy_run
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy, symlinks=True)
    path = copy / TOY_MODEL
    before = torch.load(copy / "results/tiny/toy/8/seed0/model.pt", weights_only=False)
    path.write_text(toy_source().replace("# weight of the bit-balance term", "# the bit balance's weight"))
    assert "Nothing to be done" in snakemake(copy, "-n", config=config).stdout

    path.write_text(path.read_text().replace(TOY_LOSS, DOUBLED_LOSS))
    plan = snakemake(copy, "-n", config=config)
    assert planned_jobs(plan)["train"] == 1
    assert "method=toy" in plan.stdout and "method=egath" not in plan.stdout
    snakemake(copy, "--cores", "2", config=config)
    log = (copy / "logs/train/tiny/toy/8.log").read_text()
    assert "training again: results/tiny/toy/8/.trained/seed0.pt was trained with other code.methods/toy.py" in log
    after = torch.load(copy / "results/tiny/toy/8/seed0/model.pt", weights_only=False)
    assert not torch.equal(before["state_dict"]["image_hash.weight"], after["state_dict"]["image_hash.weight"])
    for epoch in after["history"]:  # the new loss is what trained
        assert epoch["total"] == pytest.approx(2 * epoch["pairwise"] + 0.1 * epoch["balance"])


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


def test_a_method_file_that_does_not_parse_stops_the_dry_run_naming_file_and_line(tmp_path):
    (tmp_path / "methods").mkdir()
    lines = toy_source().splitlines()
    broken = next(i for i, line in enumerate(lines) if line.startswith("def toy_loss("))
    lines[broken] = lines[broken].replace("def toy_loss(", "def toy_loss(:")
    (tmp_path / TOY_MODEL).write_text("\n".join(lines) + "\n")
    result = snakemake(tmp_path, "-n", config=toy_config(tmp_path, {"egath": {}, "toy": {"model": TOY_MODEL}}),
                       check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "config key methods.toy.model" in output and f"{TOY_MODEL}:{broken + 1}: invalid syntax" in output
    assert "Traceback" not in output and "Job stats" not in output and not (tmp_path / "results").exists()


@pytest.mark.parametrize("entry, known", [
    ({"model": TOY_MODEL, "params": {"lrr": 0.1}}, "['balance_weight']"),
    ({"model": "gcdh", "params": {"lrr": 0.1, "adjacency_reweight": 0.5}}, "['adjacency_reweight']"),
])
def test_an_unknown_method_parameter_stops_the_dry_run_naming_the_known_ones(tmp_path, entry, known):
    (tmp_path / "methods").mkdir()
    (tmp_path / TOY_MODEL).write_text(toy_source())
    result = snakemake(tmp_path, "-n", config=toy_config(tmp_path, {"egath": {}, "toy": entry}), check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "config key methods.toy.params" in output and "['lrr']; known: [" in output
    assert known in output and "FutureWarning" not in output  # torch_geometric's, on import
    assert "Traceback" not in output and "Job stats" not in output and not (tmp_path / "results").exists()
