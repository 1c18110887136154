"""What a user installs and starts from: dependency lists, profiles, the own-data config."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from test_workflow import REPO, planned_jobs, snakemake

# Runs the workflow; the rules' environment does not need it.
ORCHESTRATION_ONLY = {"snakemake"}
PINNED = ("torch", "torchvision")  # the Makefile's pair, carried over to envs/egath.yaml


def split_requirement(line: str) -> tuple[str, str]:
    """('open-clip-torch', '>=2.24') from 'open_clip_torch>=2.24' (names compared as pip does)."""
    name, spec = re.fullmatch(r"\s*([A-Za-z0-9._-]+)\s*(.*?)\s*", line).groups()
    return re.sub(r"[-_.]+", "-", name).lower(), spec


def pyproject_dependencies() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return dict(map(split_requirement, project["dependencies"]))


def conda_pip_dependencies() -> dict[str, str]:
    env = yaml.safe_load((REPO / "envs/egath.yaml").read_text())
    pip = [entry["pip"] for entry in env["dependencies"] if isinstance(entry, dict)]
    assert len(pip) == 1, "envs/egath.yaml should have one pip: section"
    return dict(map(split_requirement, pip[0]))


def makefile_pins() -> dict[str, str]:
    makefile = (REPO / "Makefile").read_text()
    return {name: f"=={version}" for name, version in re.findall(r'"(torch|torchvision)==([^"]+)"', makefile)}


def test_conda_environment_lists_what_pyproject_lists():
    runtime = {k: v for k, v in pyproject_dependencies().items() if k not in ORCHESTRATION_ONLY}
    conda = conda_pip_dependencies()
    assert sorted(conda) == sorted(runtime)
    unpinned = {k: v for k, v in conda.items() if k not in PINNED}
    assert unpinned == {k: v for k, v in runtime.items() if k not in PINNED}


def test_conda_environment_pins_torch_as_the_makefile_does():
    pins = makefile_pins()
    assert set(pins) == set(PINNED)
    conda = conda_pip_dependencies()
    assert {name: conda[name] for name in PINNED} == pins


def test_licence_file_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == {"text": "MIT"}
    assert (REPO / "LICENSE").read_text().startswith("MIT License")


@pytest.mark.parametrize("profile", sorted(p.name for p in (REPO / "profiles").iterdir()))
def test_every_profile_reruns_incomplete_jobs(profile):
    # A killed training job resumes from its checkpoint only if Snakemake reruns it.
    settings = yaml.safe_load((REPO / "profiles" / profile / "config.yaml").read_text())
    assert settings.get("rerun-incomplete") is True


def test_own_data_config_plans_one_dataset_and_no_downloads(tmp_path):
    data = tmp_path / "data/mydata"
    data.mkdir(parents=True)
    rows = [f"s{i}\timages/{i}.jpg\ta dog and a cat\tdog,cat" for i in range(20)]
    (data / "manifest.tsv").write_text("id\timage\ttext\tlabels\n" + "\n".join(rows) + "\n")
    (data / "labels.txt").write_text("dog\ncat\n")
    result = snakemake(tmp_path, "-n", config=REPO / "configs/own-data.yaml")
    jobs = planned_jobs(result)
    # config.yaml's three datasets and the GloVe vectors are not planned: nothing to download
    # but the CLIP weights, once.
    assert "download_dataset" not in jobs and "prepare_dataset" not in jobs
    assert "download_glove" not in jobs
    assert jobs["fetch_clip_weights"] == 1
    assert jobs["build_pairs"] == 1 and jobs["extract_features"] == 1
    assert jobs["train"] == 3  # egath x 16, 32, 64 bits
    assert "results/mydata/pairs.h5" in result.stdout


def test_own_data_config_names_a_missing_manifest(tmp_path):
    result = snakemake(tmp_path, "-n", config=REPO / "configs/own-data.yaml", check=False)
    assert result.returncode != 0
    assert "data/mydata/manifest.tsv" in result.stdout + result.stderr


def test_every_training_setting_can_be_set_in_the_config():
    # the schema forbids unknown keys, so a TrainConfig field it leaves out cannot be set at all
    from dataclasses import fields

    from egath.training import TrainConfig

    schema = yaml.safe_load((REPO / "schemas/config.schema.yaml").read_text())
    in_schema = set(schema["definitions"]["training"]["properties"])
    settable = {f.name for f in fields(TrainConfig)} - {"seed"}  # set per run from `seeds`
    assert in_schema == settable


def test_a_jobs_settings_are_the_training_block_under_its_matching_overrides():
    # egath.settings resolves them for the workflow's jobs and for the benchmarks alike
    from egath.settings import job_training, method_spec

    config = {"training": {"epochs": 15, "lr": 1e-3},
              "train_overrides": [{"method": ["dcmh", "ucch"], "params": {"epochs": 30}},
                                  {"dataset": "coco", "bits": 64, "params": {"lr": 1e-4}},
                                  {"method": "dcmh", "bits": [16, 32], "params": {"batch_size": 32}}],
              "methods": {"dcmh": None, "mith": {"bits": [32], "tune": False, "params": {"feature_dim": 64}}}}
    assert job_training(config, "synthetic", "dcmh", 32) == {"epochs": 30, "lr": 1e-3, "batch_size": 32}
    assert job_training(config, "coco", "dcmh", 64) == {"epochs": 30, "lr": 1e-4}
    assert job_training(config, "coco", "mith", 32) == {"epochs": 15, "lr": 1e-3}
    assert method_spec(config, "dcmh") == {} and method_spec(config, "mith") == {"params": {"feature_dim": 64}}
