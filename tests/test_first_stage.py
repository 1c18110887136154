"""The first stage of a two-step method (egath.first_stage, egath.methods.FIRST_STAGES): what its
output records, resuming a killed run, and the training's refusal of a first stage that belongs
to another run."""
from __future__ import annotations

import importlib
import json
import logging
import subprocess
import sys
from dataclasses import fields

import pytest
import torch

from egath import training
from egath.first_stage import run_first_stage
from egath.lineage import MismatchError, pairs_lineage
from egath.methods import FIRST_STAGES, REGISTRY, load_method, twdh
from separable import BITS

SPEC = {"params": {"transform": {"long_bits": 8, "epochs": 6, "stop_when_lossless": False}}}
PARAMS = {"epochs": 2, "batch_size": 16, "feature_dim": 16}


def make(files, out, spec=SPEC, bits=BITS):
    return run_first_stage(files["pairs"], files["features"], out, "twdh", bits, spec, dataset="separable")


def prepare(files, first_stage, method="twdh", bits=BITS, spec=SPEC):
    return training.prepare_run(files["pairs"], files["features"], files["graph"], method, bits, PARAMS, spec,
                                first_stage=first_stage)


def test_first_stages_are_declared_without_torch():
    # the workflow reads FIRST_STAGES when it starts, which must stay quick
    probe = "import sys, egath.methods as m; assert m.FIRST_STAGES; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
    for model, stage in FIRST_STAGES.items():
        assert model in REGISTRY
        module, _, function = stage.run.partition(":")
        assert callable(getattr(importlib.import_module(module), function))
        params = load_method(model).params
        assert stage.settings in {f.name for f in fields(params)}
        assert isinstance(getattr(params(), stage.settings), dict)


def test_output_records_what_it_was_made_from(separable_files, tmp_path):
    out = tmp_path / "first_stage.pt"
    made = make(separable_files, out)
    record = torch.load(out, weights_only=True)
    assert not (tmp_path / "first_stage.pt.ckpt").exists()
    assert (record["model"], record["method"], record["dataset"], record["bits"]) == ("twdh", "twdh", "separable", BITS)
    assert record["settings"] == {**vars(twdh.TransformSettings()), **SPEC["params"]["transform"]}  # resolved
    lineage = pairs_lineage(separable_files["pairs"])
    assert {k: record["inputs"][k] for k in ("dataset", "split_sha256", "labels_sha256", "source_sha256")} == {
        k: lineage[k] for k in ("dataset", "split_sha256", "labels_sha256", "source_sha256")}
    assert record["inputs"]["encoder"] == "tiny (none)" and len(record["inputs_sha256"]) == 64
    assert record["summary"]["epochs"] == 6 and len(record["summary"]["history"]) == 6
    assert record["tensors"]["transform"].shape == (16, 2 * BITS)
    for name, tensor in made["tensors"].items():
        assert torch.equal(record["tensors"][name], tensor)


def interrupted(files, out, monkeypatch, epoch):
    """Run the first stage with its lossless check failing in epoch `epoch`, after the checkpoint of
    epoch `epoch - 1`, as a kill there would."""
    real, calls = twdh.maps_losslessly, []

    def fail_in_epoch(*args):
        calls.append(1)
        if len(calls) == epoch:
            raise RuntimeError("simulated kill")
        return real(*args)

    monkeypatch.setattr(twdh, "maps_losslessly", fail_in_epoch)
    with pytest.raises(RuntimeError, match="simulated kill"):
        make(files, out)
    monkeypatch.setattr(twdh, "maps_losslessly", real)


def assert_same_output(a, b):
    assert a["tensors"].keys() == b["tensors"].keys()
    for name in a["tensors"]:
        assert torch.equal(a["tensors"][name], b["tensors"][name]), name
    assert a["summary"] == b["summary"]


def test_a_killed_first_stage_resumes_to_the_output_of_an_uninterrupted_run(separable_files, tmp_path, monkeypatch,
                                                                             caplog):
    uninterrupted = make(separable_files, tmp_path / "a.pt")
    out, ckpt = tmp_path / "b.pt", tmp_path / "b.pt.ckpt"
    interrupted(separable_files, out, monkeypatch, epoch=3)
    assert not out.exists() and torch.load(ckpt, weights_only=False)["state"]["epoch"] == 2
    caplog.clear()  # only the resumed run's lines (earlier tests may have turned INFO on)
    with caplog.at_level(logging.INFO):
        resumed = make(separable_files, out)
    assert f"resuming the first stage from {ckpt} after epoch 2" in caplog.text
    assert "transform epoch 1/6" not in caplog.text and "transform epoch 3/6" in caplog.text
    assert_same_output(resumed, uninterrupted)
    assert not ckpt.exists()


def test_a_checkpoint_of_other_settings_or_an_unreadable_one_is_not_resumed(separable_files, tmp_path, monkeypatch,
                                                                            caplog):
    out, ckpt = tmp_path / "b.pt", tmp_path / "b.pt.ckpt"
    interrupted(separable_files, out, monkeypatch, epoch=3)
    other = {"params": {"transform": {**SPEC["params"]["transform"], "l1_weight": 0.01}}}
    with caplog.at_level(logging.INFO):
        restarted = make(separable_files, out, other)
    assert f"ignoring {ckpt}: it belongs to other settings or inputs" in caplog.text
    assert_same_output(restarted, make(separable_files, tmp_path / "c.pt", other))
    ckpt.write_bytes(b"cut short")
    with caplog.at_level(logging.INFO):
        restarted = make(separable_files, out)
    assert f"ignoring {ckpt}: unreadable" in caplog.text
    assert_same_output(restarted, make(separable_files, tmp_path / "d.pt"))


def test_training_refuses_a_missing_or_foreign_first_stage(separable_files, tmp_path):
    files = separable_files
    stage = tmp_path / "first_stage.pt"
    make(files, stage)
    assert torch.equal(prepare(files, stage).first_stage["transform"], torch.load(stage)["tensors"]["transform"])
    with pytest.raises(ValueError, match="'twdh' trains in two steps: its training reads the output of its first"):
        prepare(files, None)
    with pytest.raises(ValueError, match="'egath' trains in one step and reads no first stage"):
        prepare(files, stage, method="egath", spec=None)
    with pytest.raises(ValueError, match=f"bits: 8 in {stage}, 16 for this run"):
        prepare(files, stage, bits=16)
    other = {"params": {"transform": {**SPEC["params"]["transform"], "lr": 0.5}}}
    with pytest.raises(ValueError, match=f"transform.lr: 0.1 in {stage}, 0.5 for this run"):
        prepare(files, stage, spec=other)
    # made from other pairs (another label set)
    record = torch.load(stage)
    record["inputs"]["labels_sha256"] = "0" * 64
    torch.save(record, tmp_path / "foreign.pt")
    with pytest.raises(MismatchError, match="labels_sha256"):
        prepare(files, tmp_path / "foreign.pt")
    (tmp_path / "cut.pt").write_bytes(stage.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable first-stage output .* delete it and run again"):
        prepare(files, tmp_path / "cut.pt")
    with pytest.raises(ValueError, match="'egath' trains in one step: it has no first stage"):
        run_first_stage(files["pairs"], files["features"], tmp_path / "x.pt", "egath", BITS)


def test_a_new_first_stage_is_never_mistaken_for_the_one_a_kept_model_was_trained_with(separable_files, tmp_path,
                                                                                     caplog):
    files, kept = separable_files, tmp_path / "kept.pt"
    stage = tmp_path / "first_stage.pt"
    make(files, stage)
    train = lambda out: training.train(files["pairs"], files["features"], files["graph"], out, "twdh", BITS, PARAMS,
                                       spec=SPEC, reuse_path=kept, first_stage=stage)
    train(tmp_path / "a.pt")
    with caplog.at_level(logging.INFO):
        train(tmp_path / "b.pt")
    assert "already trained with these settings, inputs and code" in caplog.text
    # the same settings, another transform (the first stage made again by other code)
    record = torch.load(stage)
    record["tensors"]["transform"] = -record["tensors"]["transform"]
    torch.save(record, stage)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        result = train(tmp_path / "c.pt")
    assert "already trained" not in caplog.text
    assert torch.equal(result["state_dict"]["transform"], record["tensors"]["transform"])


def test_a_two_step_method_trains_from_the_command_line(separable_files, tmp_path):
    from egath.cli import main

    files, transform = separable_files, json.dumps(SPEC["params"]["transform"])
    stage, model = tmp_path / "first_stage.pt", tmp_path / "model.pt"
    common = ["--method", "twdh", "--bits", str(BITS), "--method-param", f"transform={transform}", "--device", "cpu"]
    main(["first-stage", str(files["pairs"]), str(files["features"]), str(stage), *common])
    assert torch.load(stage, weights_only=True)["settings"]["long_bits"] == 8  # the command's setting
    main(["train", str(files["pairs"]), str(files["features"]), str(files["graph"]), str(model), *common,
          "--first-stage", str(stage), "--param", "epochs=2", "--param", "feature_dim=16"])
    ckpt = torch.load(model, weights_only=False)
    assert ckpt["method_params"]["transform"]["long_bits"] == 8 and ckpt["config"]["epochs"] == 2
    with pytest.raises(ValueError, match="'twdh' trains in two steps"):
        main(["train", str(files["pairs"]), str(files["features"]), str(files["graph"]), str(model), *common])
    main(["train", str(files["pairs"]), str(files["features"]), str(files["graph"]), str(model), "--method", "itq",
          "--text", "clip", "--bits", str(BITS), "--device", "cpu"])
    assert torch.load(model, weights_only=False)["method_spec"]["text"] == "clip"
