"""`gradaudit utility`: measures into the run folder's results store and prints the table."""

from __future__ import annotations

import pytest

from gradaudit.cli import main
from gradaudit.evaluation.store import ResultsStore


@pytest.fixture(autouse=True, scope="module")
def _single_thread(single_thread):
    yield


def test_utility_command_stores_baseline_and_defenses(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["utility", "--out", str(out), "--defense", "prune:0.9", "--defense", "dpsgd:1,1.1",
                 "--rounds", "3", "--clients", "2", "--batch-size", "4"]) == 0
    text = capsys.readouterr().out
    assert "prune:0.9" in text and "dpsgd:C=1,sigma=1.1" in text and "measured" in text
    with ResultsStore(out) as store:
        rows = store.utility()
    assert [r.defense for r in rows] == ["none", "prune:0.9", "dpsgd:C=1,sigma=1.1"]
    assert all(r.config["rounds"] == 3 and r.config["clients"] == 2 for r in rows)
    # a rerun measures nothing new
    assert main(["utility", "--out", str(out), "--defense", "prune:0.9", "--rounds", "3", "--clients", "2",
                 "--batch-size", "4"]) == 0
    assert "stored" in capsys.readouterr().out
    with ResultsStore(out) as store:
        assert len(store.utility()) == 3


@pytest.mark.parametrize("args, message", [
    (["--defense", "bogus:1"], "unknown defense 'bogus'"),
    (["--defense", "prune:0.9", "--model-kwargs", "{not json"], "--model-kwargs"),
    (["--defense", "prune:0.9", "--protocol", "sgd"], "protocol"),
    (["--dataset", "nope"], "unknown dataset"),
])
def test_utility_command_user_errors_exit_2(tmp_path, capsys, args, message):
    assert main(["utility", "--out", str(tmp_path / "r"), "--rounds", "1"] + args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_utility_from_a_sweep_uses_its_defenses_data_and_model_so_rows_join_its_cells(tmp_path, capsys):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("base:\n  data: {name: embedded}\n  model: {name: mlp, kwargs: {width: 16}}\n"
                     "attacks: [{preset: dlg}]\ndefenses: [[], [prune:0.9], ['dpsgd:1,1.1', 'prune:0.5']]\n"
                     "batch_sizes: [1]\n")
    out = tmp_path / "run"
    assert main(["utility", "--out", str(out), "--sweep", str(sweep), "--rounds", "2", "--clients", "2"]) == 0
    assert "mlp on embedded" in capsys.readouterr().out
    with ResultsStore(out) as store:
        rows = store.utility()
    # the labels are the sweep's defense labels (cells.defense), so the analysis joins them
    from gradaudit.evaluation.utility import defense_label
    assert [r.defense for r in rows] == ["none", defense_label(["prune:0.9"]),
                                         defense_label(["dpsgd:1,1.1", "prune:0.5"])]
    assert all(r.model == "mlp" and r.config["model_kwargs"] == {"width": 16} for r in rows)
    # an explicit --model wins over the sweep's
    assert main(["utility", "--out", str(tmp_path / "r2"), "--sweep", str(sweep), "--model", "lenet",
                 "--rounds", "1", "--clients", "2"]) == 0
    with ResultsStore(tmp_path / "r2") as store:
        assert {r.model for r in store.utility()} == {"lenet"}


def test_a_defense_that_makes_training_diverge_is_recorded_not_an_error(tmp_path, capsys):
    out = tmp_path / "run"
    # noise of std 1e30 on every update makes the model non-finite within a few rounds at lr 0.1
    assert main(["utility", "--out", str(out), "--defense", "noise:1e30", "--rounds", "50", "--clients", "2",
                 "--batch-size", "4", "--model", "mlp"]) == 0
    assert "diverged (round" in capsys.readouterr().out
    with ResultsStore(out) as store:
        rows = {r.defense: r for r in store.utility()}
    noisy = next(r for d, r in rows.items() if d.startswith("noise"))
    assert noisy.final_train_loss is None and noisy.test_accuracy is None
    assert 1 <= noisy.config["diverged_at_round"] <= 50
    assert rows["none"].final_train_loss is not None and "diverged_at_round" not in rows["none"].config
