"""The equal tuning budget (egath.tuning) and the methods' input forms (egath.inputs)."""
import json
from dataclasses import fields

import pytest
import torch

from egath import training, tuning
from egath.inputs import InputForm, InputTransform, TransformedInputs
from egath.methods import REGISTRY, load_method, model_from_checkpoint
from egath.methods.base import Range
from separable import BITS

PARAMS = {"epochs": 2, "batch_size": 16, "d_model": 16, "ff_dim": 16, "feature_dim": 16, "gat_hidden": 16}
BUDGET = tuning.TuningBudget(trials=3, epochs=2, n_validation=16, seed=0)


def files_of(separable_files):
    return separable_files["pairs"], separable_files["features"], separable_files["graph"]


# --------------------------------------------------------------------------- search space

def test_every_method_declares_a_valid_search_space():
    training_keys = {f.name for f in fields(training.TrainConfig)}
    for name in REGISTRY:
        method = load_method(name)
        space = method.tuning_space
        if name == "itq":  # closed form: nothing to tune
            assert space == {}
            continue
        assert "lr" in space and len(space) >= 2, name  # its learning rate and a loss weight at least
        own = set(method.params.__dataclass_fields__)
        for key, rng in space.items():
            assert key in training_keys | own, (name, key)
            assert 0 < rng.low < rng.high if rng.log else rng.low < rng.high, (name, key)


def test_range_maps_the_unit_interval_onto_its_bounds():
    assert Range(1e-4, 1e-2).value(0.0) == pytest.approx(1e-4)
    assert Range(1e-4, 1e-2).value(0.5) == pytest.approx(1e-3)  # log-uniform: the geometric middle
    assert Range(0.2, 0.8, log=False).value(0.5) == pytest.approx(0.5)
    assert Range(1, 9, log=False, integer=True).value(0.49) == 5


def test_trials_start_untuned_and_share_their_points_across_methods():
    space_a = {"lr": Range(1e-4, 1e-2), "triplet_weight": Range(0.1, 10.0)}
    space_b = {"lr": Range(1e-3, 1e-1), "alpha": Range(0.1, 0.9, log=False)}
    budget = tuning.TuningBudget(trials=6)
    a, b = tuning.trial_settings(space_a, budget), tuning.trial_settings(space_b, budget)
    assert len(a) == 6 and a[0] == {} and b[0] == {}
    for settings_a, settings_b in zip(a[1:], b[1:]):
        # the same point of the unit square, mapped onto each method's own ranges
        assert settings_a["lr"] / 1e-4 == pytest.approx(settings_b["lr"] / 1e-3)
        assert 1e-4 <= settings_a["lr"] <= 1e-2 and 0.1 <= settings_b["alpha"] <= 0.9
    assert len({s["lr"] for s in a[1:]}) == 5  # distinct points
    assert tuning.trial_settings({}, budget) == [{}]


# --------------------------------------------------------------------------- tune

def test_tune_keeps_the_best_validation_trial_and_applies_it(separable_files, tmp_path, monkeypatch):
    seen = []  # the settings each trial trained with
    real = tuning.start_training
    monkeypatch.setattr(tuning, "start_training", lambda run: seen.append(run.cfg) or real(run))
    out = tmp_path / "tuning.json"
    result = tuning.tune(*files_of(separable_files), out, "egath", BITS, PARAMS, None, BUDGET, dataset="separable")
    assert json.loads(out.read_text()) == result
    assert json.loads(tuning.trials_path(out).read_text())["trials"] == result["trials"]
    assert len(result["trials"]) == 3 and result["trials"][0]["settings"] == {}
    scores = [t["validation_map"] for t in result["trials"]]
    assert result["best"]["validation_map"] == max(scores)
    assert result["best"]["settings"] == result["trials"][scores.index(max(scores))]["settings"]
    assert set(result["space"]) == set(load_method("egath").tuning_space)
    # every trial ran the budget's epochs on the training pairs minus the held-out ones
    assert len(seen) == 3 and all(cfg.epochs == 2 and cfg.n_validation == 16 for cfg in seen)
    for cfg, trial in zip(seen, result["trials"]):
        assert cfg.lr == trial["settings"].get("lr", 1e-4)  # trial 0: the untuned rate

    params, spec, protocol = tuning.apply_tuning({"lr": 1.0, "epochs": 7}, {"text": "bow"},
                                                 {**result, "best": {"trial": 1, "settings": {"lr": 0.5, "beta": 2}}})
    assert params == {"lr": 0.5, "epochs": 7} and spec == {"text": "bow", "params": {"beta": 2}}
    assert protocol.startswith("tuned: lr=0.5, beta=2 (best of 3 trials x 2 epochs on 16 held-out")


def test_a_killed_tuning_job_resumes_after_its_last_finished_trial(separable_files, tmp_path, monkeypatch):
    out = tmp_path / "tuning.json"
    calls = []
    real = tuning.score_trial

    def dies_in_the_second_trial(run, settings):
        calls.append(settings)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(run, settings)

    monkeypatch.setattr(tuning, "score_trial", dies_in_the_second_trial)
    with pytest.raises(KeyboardInterrupt):
        tuning.tune(*files_of(separable_files), out, "egath", BITS, PARAMS, None, BUDGET)
    assert not out.exists() and len(json.loads(tuning.trials_path(out).read_text())["trials"]) == 1
    calls.clear()
    monkeypatch.setattr(tuning, "score_trial", lambda run, settings: calls.append(settings) or real(run, settings))
    result = tuning.tune(*files_of(separable_files), out, "egath", BITS, PARAMS, None, BUDGET)
    assert len(calls) == 2 and calls[0] != {}  # the untuned trial was not run again
    assert len(result["trials"]) == 3
    # another budget does not resume from it
    calls.clear()
    tuning.tune(*files_of(separable_files), out, "egath", BITS, PARAMS, None,
                tuning.TuningBudget(trials=2, epochs=2, n_validation=16))
    assert len(calls) == 2


def test_a_diverging_trial_is_scored_none_not_chosen(separable_files, tmp_path, monkeypatch):
    real = tuning.score_trial
    monkeypatch.setattr(tuning, "score_trial", lambda run, settings: None if settings else real(run, settings))
    result = tuning.tune(*files_of(separable_files), tmp_path / "t.json", "egath", BITS, PARAMS, None, BUDGET)
    assert [t["validation_map"] is None for t in result["trials"]] == [False, True, True]
    assert result["best"]["trial"] == 0


def test_budget_settings_are_checked():
    with pytest.raises(ValueError, match="unknown tuning settings"):
        tuning.TuningBudget.from_dict({"trails": 3})
    with pytest.raises(ValueError, match=">= 1"):
        tuning.TuningBudget.from_dict({"trials": 0})


# --------------------------------------------------------------------------- input forms

def test_inputs_are_brought_to_the_methods_form_from_the_training_pairs_only(separable_files, tmp_path):
    files = files_of(separable_files)
    run = training.prepare_run(*files, "dcmh", BITS, {**PARAMS, "n_validation": 16})
    raw = training.load_split(files[0], files[1], "train")
    fitted, held_out = training.split_validation(raw, 16, 0)
    assert run.transform.form == InputForm("standardise", "standardise")
    torch.testing.assert_close(run.transform.image.shift, fitted.image.mean(0))  # not the held-out rows
    torch.testing.assert_close(run.data.image.mean(0), torch.zeros(raw.image.shape[1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(run.data.image.std(0), torch.ones(raw.image.shape[1]), atol=1e-4, rtol=0)
    torch.testing.assert_close(run.validation.image, run.transform.image(held_out.image))
    # a config's override
    run = training.prepare_run(*files, "dcmh", BITS, PARAMS, spec={"inputs": {"image": "none"}})
    assert run.transform.form == InputForm("none", "standardise") and run.transform.image is None
    with pytest.raises(ValueError, match="unknown transform 'scale'"):
        training.prepare_run(*files, "dcmh", BITS, PARAMS, spec={"inputs": {"text": "scale"}})


def test_a_trained_model_reads_cached_features_as_they_are(separable_files, tmp_path):
    files = files_of(separable_files)
    result = training.train(*files, tmp_path / "model.pt", "dcmh", BITS, PARAMS)
    model = model_from_checkpoint(torch.load(tmp_path / "model.pt", weights_only=False)).eval()
    assert isinstance(model, TransformedInputs)
    transform = InputTransform.from_state(result["input_transform"])
    data = training.load_split(files[0], files[1], "query")
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(data.image), model.model.encode_image(transform.image(data.image)))
        torch.testing.assert_close(model.encode_text(data.text), model.model.encode_text(transform.text(data.text)))
    # a method whose form is the cached one comes back as itself
    training.train(*files, tmp_path / "itq.pt", "itq", BITS, PARAMS, spec={"text": "clip"})
    assert not isinstance(model_from_checkpoint(torch.load(tmp_path / "itq.pt", weights_only=False)),
                          TransformedInputs)
