"""A finished model, a checkpoint or a tuning search is reused only under its own run key: the
same settings, training data, code that trains (egath.sources) and torch thread count."""
import json

import pytest
import torch

from egath import training, tuning
from egath.methods import load_method
from egath.sources import code_digests
from separable import BITS, assert_same_state
from test_user_method import DOUBLED_LOSS, TOY_LOSS, toy_source

PARAMS = {"epochs": 2, "batch_size": 16, "d_model": 16, "ff_dim": 16, "feature_dim": 16, "gat_hidden": 16}


def train(files, out, method="egath", params=None, spec=None, reuse=None):
    return training.train(files["pairs"], files["features"], files["graph"], out, method, BITS,
                          {**PARAMS, **(params or {})}, spec=spec, reuse_path=reuse)


@pytest.fixture
def toy_file(tmp_path, monkeypatch):
    """The example method of docs/methods.md as a user's file, loaded afresh after each edit."""
    path = tmp_path / "methods" / "toy.py"
    path.parent.mkdir()
    path.write_text(toy_source())
    monkeypatch.chdir(tmp_path)
    yield path
    load_method.cache_clear()


def edit(path, old, new):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    load_method.cache_clear()


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2 if before == 1 else 1)
    yield
    torch.set_num_threads(before)


def test_a_kept_model_is_reused_under_the_same_key(separable_files, tmp_path, caplog):
    kept = tmp_path / ".trained" / "seed0.pt"
    first = train(separable_files, tmp_path / "a.pt", reuse=kept)
    caplog.clear()
    with caplog.at_level("INFO", logger="egath.training"):
        again = train(separable_files, tmp_path / "b.pt", reuse=kept)
    assert f"already trained with these settings, inputs and code: reusing {kept}" in caplog.text
    assert "epoch 1/2" not in caplog.text
    assert_same_state(first["state_dict"], again["state_dict"])
    assert (tmp_path / "b.pt").stat().st_ino == kept.stat().st_ino


@pytest.mark.parametrize("change, changed", [
    ({"params": {"epochs": 3}}, "config.epochs"),
    ({"params": {"seed": 1}}, "config.seed"),
])
def test_a_kept_model_of_other_training_settings_is_trained_again(separable_files, tmp_path, caplog, change, changed):
    kept = tmp_path / ".trained" / "seed0.pt"
    train(separable_files, tmp_path / "a.pt", reuse=kept)
    with caplog.at_level("INFO", logger="egath.training"):
        result = train(separable_files, tmp_path / "b.pt", reuse=kept, **change)
    assert f"training again: {kept} was trained with other {changed}" in caplog.text
    assert [h["epoch"] for h in result["history"]] == list(range(1, result["config"]["epochs"] + 1))
    assert torch.load(kept, weights_only=False)["run_key"] == result["run_key"]  # the new one is kept


def test_a_kept_model_of_other_method_parameters_is_trained_again(separable_files, toy_file, tmp_path, caplog):
    kept = tmp_path / ".trained" / "seed0.pt"
    spec = {"model": "methods/toy.py"}
    first = train(separable_files, tmp_path / "a.pt", "toy", spec=spec, reuse=kept)
    with caplog.at_level("INFO", logger="egath.training"):
        other = train(separable_files, tmp_path / "b.pt", "toy", spec={**spec, "params": {"balance_weight": 5.0}},
                      reuse=kept)
    assert "other method_params.balance_weight, method_spec.params.balance_weight" in caplog.text
    assert other["method_params"] == {"balance_weight": 5.0}
    assert other["history"][-1]["total"] != first["history"][-1]["total"]


def test_an_edited_method_file_trains_again_and_an_edited_comment_does_not(separable_files, toy_file, tmp_path,
                                                                          caplog):
    kept = tmp_path / ".trained" / "seed0.pt"
    spec = {"model": "methods/toy.py"}
    first = train(separable_files, tmp_path / "a.pt", "toy", spec=spec, reuse=kept)
    edit(toy_file, "# weight of the bit-balance term", "# the bit balance's weight, documented anew")
    edit(toy_file, '"""toy: a linear', '"""toy, documented anew: a linear')
    with caplog.at_level("INFO", logger="egath.training"):
        same = train(separable_files, tmp_path / "b.pt", "toy", spec=spec, reuse=kept)
    assert "reusing" in caplog.text
    assert_same_state(first["state_dict"], same["state_dict"])

    edit(toy_file, TOY_LOSS, DOUBLED_LOSS)
    caplog.clear()
    with caplog.at_level("INFO", logger="egath.training"):
        edited = train(separable_files, tmp_path / "c.pt", "toy", spec=spec, reuse=kept)
    assert f"training again: {kept} was trained with other code.methods/toy.py" in caplog.text
    # the new loss trained: twice the pairwise term in every epoch's total
    for old, new in zip(first["history"], edited["history"]):
        assert new["total"] == pytest.approx(new["pairwise"] * 2 + 0.1 * new["balance"])
        assert old["total"] == pytest.approx(old["pairwise"] + 0.1 * old["balance"])


def test_the_run_key_holds_the_code_of_the_method_and_of_training(separable_files, tmp_path):
    key = train(separable_files, tmp_path / "a.pt", "gcdh")["run_key"]
    # gcdh trains with EGATH's objective: its module is part of gcdh's code
    assert {"egath/methods/gcdh.py", "egath/methods/egath.py", "egath/methods/base.py",
            "egath/training.py", "egath/inputs.py"} <= set(key["code"])
    assert key["code"] == code_digests(["egath.methods.gcdh", "egath.training"])
    assert key["torch_threads"] == torch.get_num_threads() and key["device"] == "cpu"


def test_a_kept_model_and_a_checkpoint_of_another_thread_count_are_not_used(separable_files, tmp_path, caplog,
                                                                            monkeypatch):
    kept = tmp_path / ".trained" / "seed0.pt"
    first = train(separable_files, tmp_path / "a.pt", reuse=kept)
    (tmp_path / "b.pt.ckpt").write_bytes((kept.read_bytes()))  # a checkpoint carries the same run_key
    threads = first["run_key"]["torch_threads"]
    torch.set_num_threads(threads + 1)
    try:
        with caplog.at_level("INFO", logger="egath.training"):
            other = train(separable_files, tmp_path / "b.pt", reuse=kept)
    finally:
        torch.set_num_threads(threads)
    assert f"training again: {kept} was trained with other torch_threads" in caplog.text
    assert "b.pt.ckpt: it belongs to other torch_threads" in caplog.text
    assert other["run_key"]["torch_threads"] == threads + 1
    assert [h["epoch"] for h in other["history"]] == [1, 2]


BUDGET = tuning.TuningBudget(trials=2, epochs=1, n_validation=16, seed=0)


def tune(files, out, method="egath", spec=None):
    return tuning.tune(files["pairs"], files["features"], files["graph"], out, method, BITS, PARAMS, spec, BUDGET)


def test_a_finished_search_is_reused_under_the_same_key_only(separable_files, toy_file, tmp_path, caplog,
                                                             monkeypatch):
    trained = []
    real = tuning.score_trial
    monkeypatch.setattr(tuning, "score_trial", lambda run, settings: trained.append(settings) or real(run, settings))
    spec = {"model": "methods/toy.py"}
    first = tune(separable_files, tmp_path / "tuning.json", "toy", spec)
    n = len(first["trials"])  # one: toy declares no search space
    assert len(trained) == n
    with caplog.at_level("INFO", logger="egath.tuning"):
        again = tune(separable_files, tmp_path / "tuning.json", "toy", spec)
    assert len(trained) == n and again == first
    assert f"{n} of the {n} trials already run with these settings, inputs and code" in caplog.text

    edit(toy_file, TOY_LOSS, DOUBLED_LOSS)
    caplog.clear()
    with caplog.at_level("INFO", logger="egath.tuning"):
        tune(separable_files, tmp_path / "tuning.json", "toy", spec)
    assert len(trained) == 2 * n
    assert "searching again" in caplog.text and "other code.methods/toy.py" in caplog.text
    kept = json.loads(tuning.trials_path(tmp_path / "tuning.json").read_text())
    assert kept["key"]["code"]["egath/tuning.py"] == code_digests(["egath.tuning"])["egath/tuning.py"]
