"""Real Snakemake runs of the workflow on a tiny synthetic dataset."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
BITS = [8, 16]
SEEDS = [0, 1]

TINY_CONFIG = {
    "datasets": {
        "tiny": {
            "source": "synthetic",
            "synthetic": {"n_pairs": 120, "seed": 3, "image_size": 32},
            "n_query": 20,
            "n_train": 60,
            "split_seed": 1,
            "bow_dim": 50,
        }
    },
    "bits": BITS,
    "seeds": SEEDS,
    "methods": {"egath": {}},
    "label_embeddings": {"source": "clip"},
    "clip": {"model": "egath-tiny-vit", "pretrained": "none", "batch_size": 64, "num_workers": 0},
    "device": "cpu",
    "training": {"epochs": 2, "batch_size": 16, "d_model": 16, "ff_dim": 16, "feature_dim": 16,
                 "gat_hidden": 16},
}

pytestmark = pytest.mark.workflow


def snakemake(workdir: Path, *args: str, config: Path | None = None, check: bool = True, workflow: Path = REPO):
    """Run the workflow in `workflow` (default: this repository), its jobs importing its egath."""
    cmd = [str(SNAKEMAKE), "-s", str(workflow / "Snakefile"), "-d", str(workdir)]
    if config is not None:
        cmd += ["--configfile", str(config), "--replace-workflow-config"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if workflow != REPO:
        env.pop("PYTHONPATH", None)  # a PYTHONPATH would put another egath in front of the workflow's
    result = subprocess.run(cmd + list(args), capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd + list(args))} failed:\n{result.stdout}\n{result.stderr}")
    return result


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def planned_jobs(result) -> dict[str, int]:
    """Job counts from the 'Job stats' table of a dry run."""
    counts = {}
    for line in (result.stdout + result.stderr).splitlines():
        match = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if match and match.group(1) != "total":
            counts[match.group(1)] = int(match.group(2))
    return counts


def brute_force_index_tie_map(query, database, query_labels, database_labels) -> float:
    aps = []
    for q, ql in zip(query.astype(int), query_labels):
        distance = (query.shape[1] - database.astype(int) @ q) / 2
        relevant = (database_labels @ ql > 0)[np.argsort(distance, kind="stable")]
        if relevant.any():
            hits = np.cumsum(relevant)[relevant]
            aps.append(np.mean(hits / (np.flatnonzero(relevant) + 1)))
    return float(np.mean(aps))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("workflow")
    config = write_config(workdir / "tiny.yaml", TINY_CONFIG)
    snakemake(workdir, "--cores", "2", config=config)
    return workdir, config


def test_table_has_one_row_per_run_and_matches_the_codes(demo_run):
    workdir, _ = demo_run
    with open(workdir / "results/tables/map.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"dataset", "method", "bits", "task", "seed", "map", "map_std"} <= set(rows[0])
    assert sorted((r["dataset"], r["method"], int(r["bits"]), r["task"], r["seed"]) for r in rows) == sorted(
        ("tiny", "egath", b, t, s) for b in BITS for t in ("i2t", "t2i") for s in ("0", "1", "mean"))
    seed_rows = [r for r in rows if r["seed"] != "mean"]
    for row in (r for r in rows if r["seed"] == "mean"):
        maps = [float(r["map"]) for r in seed_rows if (r["bits"], r["task"]) == (row["bits"], row["task"])]
        assert float(row["map"]) == pytest.approx(np.mean(maps), abs=1e-6)
        assert float(row["map_std"]) == pytest.approx(np.std(maps, ddof=1), abs=1e-6)
    for row in seed_rows:
        run = workdir / f"results/tiny/egath/{row['bits']}/seed{row['seed']}"
        with h5py.File(run / "codes.h5") as codes:
            image_query = "query/image" if row["task"] == "i2t" else "query/text"
            text_db = "database/text" if row["task"] == "i2t" else "database/image"
            expected = brute_force_index_tie_map(codes[image_query][:], codes[text_db][:],
                                                 codes["query/labels"][:], codes["database/labels"][:])
        assert float(row["map_index_ties"]) == pytest.approx(expected, abs=1e-6)
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["tasks"][row["task"]]["map"] == pytest.approx(float(row["map"]), abs=1e-6)
        assert metrics["protocol"]["n_query"] == 20
        assert metrics["protocol"]["training_seed"] == int(row["seed"])
        assert metrics["protocol"]["code_update"] == "relative"


def test_stages_write_what_the_next_stage_reads(demo_run):
    workdir, _ = demo_run
    with h5py.File(workdir / "results/tiny/pairs.h5") as pairs:
        assert pairs["labels"].shape == (120, 8)
        assert len(pairs["split/query"]) == 20 and len(pairs["split/train"]) == 60
    with h5py.File(workdir / "results/tiny/features/egath-tiny-vit_none.h5") as features:
        assert features["image"].dtype == np.float16
        assert features["image"].shape == (120, 64)
        assert features.attrs["model"] == "egath-tiny-vit"
    with h5py.File(workdir / "results/tiny/graph.h5") as graph:
        assert graph["adjacency"].shape == (8, 8)
        assert np.all(np.diag(graph["adjacency"][:]) == 1)
    with h5py.File(workdir / "results/tiny/egath/16/seed0/codes.h5") as codes:
        assert codes["query/image"].shape == (20, 16)
        assert set(np.unique(codes["database/text"][:])) <= {-1, 1}
    figure = workdir / "results/figures/pr_tiny_8.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = (workdir / "logs/train/tiny/egath/8.log").read_text()
    assert "epoch 2/2" in log


def test_second_run_has_nothing_to_do(demo_run):
    workdir, config = demo_run
    result = snakemake(workdir, "-n", config=config)
    assert "Nothing to be done" in result.stdout + result.stderr


def test_changing_one_training_parameter_reruns_only_that_job(demo_run, tmp_path):
    workdir, _ = demo_run
    changed = {**TINY_CONFIG, "train_overrides": [{"dataset": "tiny", "bits": 16, "params": {"margin": 0.3}}]}
    config = write_config(tmp_path / "changed.yaml", changed)
    result = snakemake(workdir, "-n", config=config)
    assert planned_jobs(result) == {"train": 1, "tables": 1, "figures": 1, "loss_curves": 1,
                                    "retrieval_examples": 1, "all": 1}
    output = result.stdout + result.stderr
    assert "output: results/tiny/egath/16/seed0/model.pt" in output
    assert "output: results/tiny/egath/8/seed0/model.pt" not in output
    assert re.search(r"params have changed since last execution:\s+train\n", output)


def test_adding_a_seed_trains_only_the_new_seed(demo_run, tmp_path):
    workdir, _ = demo_run
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy, symlinks=True)
    config = write_config(tmp_path / "more.yaml", {**TINY_CONFIG, "seeds": SEEDS + [2]})
    snakemake(copy, "--cores", "2", config=config)
    log = (copy / "logs/train/tiny/egath/8.log").read_text()
    assert log.count("already trained with these settings, inputs and code") == len(SEEDS)
    assert log.count("epoch 2/2") == 1  # seed 2 alone trained
    for seed in SEEDS:  # the reused seeds keep their codes
        with h5py.File(workdir / f"results/tiny/egath/8/seed{seed}/codes.h5") as a, \
                h5py.File(copy / f"results/tiny/egath/8/seed{seed}/codes.h5") as b:
            np.testing.assert_array_equal(a["query/image"][:], b["query/image"][:])
    with open(copy / "results/tables/map.csv") as f:
        assert {r["n_seeds"] for r in csv.DictReader(f) if r["seed"] == "mean"} == {"3"}


def test_report_holds_the_table_and_figures(demo_run):
    workdir, config = demo_run
    snakemake(workdir, "--report", "report.html", config=config)
    html = (workdir / "report.html").read_text(errors="replace")
    assert "map.csv" in html and "pr_tiny_16.png" in html
    # the first page holds the mAP table itself (mean over seeds as in map.csv) and what was run
    with open(workdir / "results/tables/map.csv") as f:
        means = [r for r in csv.DictReader(f) if r["seed"] == "mean"]
    assert "egath-map-table" in html
    for row in means:
        assert f"{float(row['map']):.4f} \\u00b1 {float(row['map_std']):.4f}" in html
    assert "Training seeds:</strong> 0, 1" in html and "random weights" in html
    # the selection the config leaves at its default (training.selection: average)
    assert "weights evaluated:</strong> the average of the weights over the last 20 % of the epochs" in html


@pytest.mark.parametrize("change, message", [
    ({"unknown_key": 1}, "unknown_key"),
    ({"bits": ["sixteen"]}, "sixteen"),
    ({"training": {"epochs": "many"}}, "many"),
])
def test_bad_config_is_refused_with_the_key_named(tmp_path, change, message):
    config = write_config(tmp_path / "bad.yaml", {**TINY_CONFIG, **change})
    result = snakemake(tmp_path, "-n", config=config, check=False)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def test_default_config_plans_the_paper_grid_offline(tmp_path):
    result = snakemake(tmp_path, "-n", "--configfile", str(REPO / "config.yaml"))
    jobs = planned_jobs(result)
    methods = yaml.safe_load((REPO / "config.yaml").read_text())["methods"]
    assert len(methods) >= 17  # the paper's comparison and the CLIP-era peers
    assert jobs["train"] == 3 * len(methods) * 3 and jobs["download_dataset"] == 3 and jobs["extract_features"] == 3
    assert jobs["tune"] == jobs["train"] and jobs["tuning_table"] == 1  # every cell tuned, by default
    # weights and GloVe vectors are fetched once, by local rules, for all datasets
    assert jobs["fetch_clip_weights"] == 1 and jobs["download_glove"] == 1


def test_lint_is_clean():
    for args in ([], ["--configfile", str(REPO / "configs/demo.yaml"), "--replace-workflow-config"]):
        result = subprocess.run([str(SNAKEMAKE), "--lint", *args], cwd=REPO, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Lints for" not in result.stdout + result.stderr


def test_a_replaced_image_reruns_its_feature_extraction(demo_run, tmp_path):
    """An image fixed or replaced in place is noticed: its features are extracted again."""
    workdir, config = demo_run
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy, symlinks=True)
    features = "results/tiny/features/egath-tiny-vit_none.h5"
    with h5py.File(copy / "results/tiny/pairs.h5") as f:
        first, second = f["image_paths"].asstr()[:2]
    with h5py.File(copy / features) as f:
        assert not np.array_equal(f["image"][0], f["image"][1])
    shutil.copyfile(copy / second, copy / first)  # row 0 now shows row 1's image

    plan = snakemake(copy, "-n", features, config=config)
    assert planned_jobs(plan) == {"extract_features": 1}
    assert re.search(r"params have changed since last execution:\s+extract_features", plan.stdout + plan.stderr)
    snakemake(copy, "--cores", "1", features, config=config)
    with h5py.File(copy / features) as f:
        assert np.array_equal(f["image"][0], f["image"][1])
    assert "Nothing to be done" in snakemake(copy, "-n", features, config=config).stdout


@pytest.mark.parametrize("methods, key", [
    ({"mine": {"model": "egath-typo"}}, "methods.mine.model"),
    ({"egath": {}, "egath-x": {}}, "methods.egath-x.model"),  # no model: the name is the model
])
def test_unknown_method_model_stops_the_dry_run_before_any_job(tmp_path, methods, key):
    config = write_config(tmp_path / "bad.yaml", {**TINY_CONFIG, "methods": methods})
    result = snakemake(tmp_path, "-n", config=config, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert key in output and "unknown method model" in output
    assert "Job stats" not in output and not (tmp_path / "results").exists()


def test_every_log_says_what_its_job_did_without_noise(demo_run):
    workdir, _ = demo_run
    logs = sorted((workdir / "logs").rglob("*.log"))
    assert len(logs) >= 8
    for path in logs:
        text = path.read_text()
        assert text.strip(), f"{path} is empty"
        assert "\r" not in text and "FutureWarning" not in text, path
    train = (workdir / "logs/train/tiny/egath/8.log").read_text()
    epochs = [line for line in train.splitlines() if " epoch " in line]
    assert epochs and all("tiny egath 8 bits seed " in line for line in epochs)
    extraction = (workdir / "logs/extract_features/tiny/egath-tiny-vit_none.log").read_text()
    assert "120/120" in extraction  # the progress bar's last state, as a line


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_job_once_written(workdir: Path, config: Path, script: str, written: Path, *targets: str) -> None:
    """Run the workflow (or `targets`) in `workdir` and SIGKILL every job that runs `script` as soon
    as `written` exists; Snakemake must then fail."""
    import signal
    import time

    cmd = [str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "1",
           "--configfile", str(config), "--replace-workflow-config", *targets]
    with open(workdir / "first.out", "w") as out:
        first = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.monotonic() + 400
        while not written.exists():
            assert first.poll() is None and time.monotonic() < deadline, (workdir / "first.out").read_text()
            time.sleep(0.05)
        jobs = [p for p in descendants(first.pid)
                if script in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")]
        assert jobs, f"no job running {script} found"
        for pid in jobs:
            os.kill(pid, signal.SIGKILL)
        assert first.wait(timeout=120) != 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()


def test_a_killed_training_job_resumes_with_rerun_incomplete(tmp_path):
    """SIGKILL of the training job after a checkpoint; the rerun picks up from that epoch."""
    import torch

    epochs = 400
    config = write_config(tmp_path / "kill.yaml", {
        **TINY_CONFIG, "bits": [8], "seeds": [0], "training": {**TINY_CONFIG["training"], "epochs": epochs}})
    run = tmp_path / "results/tiny/egath/8/seed0"
    kill_job_once_written(tmp_path, config, "train.py", run / "model.pt.ckpt")
    assert not (run / "model.pt").exists()
    done = torch.load(run / "model.pt.ckpt", weights_only=False)["epoch"]
    assert 1 <= done < epochs

    snakemake(tmp_path, "--cores", "1", "--rerun-incomplete", config=config)
    log = (tmp_path / "logs/train/tiny/egath/8.log").read_text()
    assert f"resuming from results/tiny/egath/8/seed0/model.pt.ckpt after epoch {done}" in log
    ran = [int(m) for m in re.findall(rf"epoch (\d+)/{epochs}", log)]
    assert ran == list(range(done + 1, epochs + 1))  # only the epochs left, each once
    history = torch.load(run / "model.pt", weights_only=False)["history"]
    assert [h["epoch"] for h in history] == list(range(1, epochs + 1))
    assert not (run / "model.pt.ckpt").exists() and (run / "metrics.json").exists()


def test_a_deleted_per_seed_result_comes_back(demo_run, tmp_path):
    """model.pt and metrics.json are results the workflow knows: deleted, they are made again
    (the model taken from .trained/, the same weights), and the table is redone from them."""
    import torch

    workdir, config = demo_run
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy, symlinks=True)
    model, metrics = "results/tiny/egath/8/seed1/model.pt", "results/tiny/egath/16/seed0/metrics.json"
    (copy / model).unlink()
    (copy / metrics).unlink()

    plan = snakemake(copy, "-n", config=config)
    assert planned_jobs(plan)["train"] == 2
    snakemake(copy, "--cores", "2", config=config)
    before = torch.load(workdir / model, weights_only=False)
    after = torch.load(copy / model, weights_only=False)
    assert before["state_dict"].keys() == after["state_dict"].keys()
    for name, weights in before["state_dict"].items():
        assert torch.equal(weights, after["state_dict"][name]), name
    assert json.loads((copy / metrics).read_text())["tasks"] == json.loads((workdir / metrics).read_text())["tasks"]
    assert "reusing results/tiny/egath/8/.trained/seed1.pt" in (copy / "logs/train/tiny/egath/8.log").read_text()
    assert (copy / "results/tables/map.csv").stat().st_mtime > (copy / metrics).stat().st_mtime


def test_pairs_left_out_by_unreadable_images_skip_go_through_every_rule(tmp_path):
    """A truncated query image and a truncated training image with `unreadable_images: skip`:
    every rule after extraction leaves their pairs out, the counts say so, and the run ends
    with its report."""
    config = write_config(tmp_path / "skip.yaml", {
        **TINY_CONFIG, "bits": [8], "seeds": [0], "clip": {**TINY_CONFIG["clip"], "unreadable_images": "skip"}})
    snakemake(tmp_path, "--cores", "2", "results/tiny/pairs.h5", config=config)
    with h5py.File(tmp_path / "results/tiny/pairs.h5") as f:
        query_row, train_row = int(f["split/query"][4]), int(f["split/train"][7])
        paths = f["image_paths"].asstr()[()]
    for row in (query_row, train_row):
        image = tmp_path / paths[row]
        image.write_bytes(image.read_bytes()[:len(image.read_bytes()) // 2])

    snakemake(tmp_path, "--cores", "2", config=config)
    snakemake(tmp_path, "--report", "report.html", config=config)
    with h5py.File(tmp_path / "results/tiny/features/egath-tiny-vit_none.h5") as f:
        assert np.flatnonzero(f["image_skipped"][:]).tolist() == sorted([query_row, train_row])
    run = tmp_path / "results/tiny/egath/8/seed0"
    with h5py.File(run / "codes.h5") as codes, h5py.File(tmp_path / "results/tiny/pairs.h5") as pairs:
        query = [r for r in pairs["split/query"][:] if r != query_row]
        assert codes["query/rows"][:].tolist() == query
        assert codes["database/rows"][:].tolist() == [r for r in pairs["split/database"][:] if r != train_row]
        np.testing.assert_array_equal(codes["query/labels"][:], pairs["labels"][query])
    protocol = json.loads((run / "metrics.json").read_text())["protocol"]
    assert (protocol["n_query"], protocol["n_train"], protocol["n_database"]) == (19, 59, 99)
    assert (protocol["torch_threads"], protocol["device"]) == (2, "cpu")  # the train rule's threads: 2
    assert (tmp_path / "results/figures/examples_tiny_egath_8.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "examples_tiny_egath_8.png" in (tmp_path / "report.html").read_text(errors="replace")


def test_an_upgraded_method_module_reruns_and_retrains_its_cells(demo_run, tmp_path):
    """An edit of egath/methods/egath.py, as a package upgrade brings, reruns egath's training
    jobs, which train again instead of reusing the models of the old code."""
    workdir, config = demo_run
    source = tmp_path / "workflow"
    source.mkdir()
    for name in ("Snakefile", "config.yaml", "rules", "scripts", "egath", "schemas", "report", "envs"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copyfile
        copy(REPO / name, source / name, **({"symlinks": True} if (REPO / name).is_dir() else {}))
    run = tmp_path / "run"
    shutil.copytree(workdir, run, symlinks=True)
    assert "Nothing to be done" in snakemake(run, "-n", config=config, workflow=source).stdout

    module = source / "egath/methods/egath.py"
    module.write_text(module.read_text().replace('summary=f"transformer branches', 'summary=f"Transformer branches'))
    plan = snakemake(run, "-n", config=config, workflow=source)
    assert planned_jobs(plan)["train"] == len(BITS)
    assert re.search(r"params have changed since last execution:\s+train", plan.stdout + plan.stderr)
    snakemake(run, "--cores", "2", config=config, workflow=source)
    log = (run / "logs/train/tiny/egath/8.log").read_text()
    assert log.count("was trained with other code.egath/methods/egath.py") == len(SEEDS)
    assert log.count("epoch 2/2") == len(SEEDS) and "reusing" not in log
