"""Strongest attack per defense (seed 002 Eq. 3) and the privacy-utility join, on a hand-filled store."""

from __future__ import annotations

import csv
import io
import math

import pytest
import torch
from safetensors.torch import save_file

from gradaudit.errors import ConfigError
from gradaudit.evaluation import analysis as A
from gradaudit.report.tables import write_tables
from gradaudit.evaluation.store import CellRow, ResultsStore, UtilityRow

CFG = {"data": {"name": "embedded"}, "model": {"name": "lenet"}}

# (attack, defense, batch size, sample, psnr, mse, lpips): two attacks, the best one differs per defense.
CELLS = [
    ("dlg", "none", 1, 0, 30.0, 0.0010, None), ("dlg", "none", 1, 1, 34.0, 0.0004, None),
    ("ig", "none", 1, 0, 25.0, 0.0030, None), ("ig", "none", 1, 1, 27.0, 0.0020, None),
    ("dlg", "prune:0.9", 1, 0, 12.0, 0.0600, 0.6), ("dlg", "prune:0.9", 1, 1, 14.0, 0.0400, 0.5),
    ("ig", "prune:0.9", 1, 0, 16.0, 0.0250, 0.4), ("ig", "prune:0.9", 1, 1, 18.0, 0.0150, 0.2),
    ("dlg", "noise:0.01", 4, 0, 20.0, 0.0100, None), ("ig", "noise:0.01", 4, 0, 19.0, 0.0090, None),
    ("dlg", "dpsgd:C=1,sigma=1.1", 1, 0, 11.0, None, None),
]


def write_images(run_dir, name: str, b: int, level: float):
    g = torch.Generator().manual_seed(len(name))
    truth = torch.rand(b, 3, 4, 4, generator=g)
    rec = (truth + level * torch.randn(b, 3, 4, 4, generator=g)).clamp(0, 1)
    path = run_dir / "images" / f"{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"truth": truth, "reconstruction": rec}, str(path))
    return f"images/{name}.safetensors"


def fill(run_dir, utility: bool = True) -> ResultsStore:
    store = ResultsStore(run_dir)
    for i, (attack, defense, b, sample, psnr, mse, lpips) in enumerate(CELLS):
        store.add_cell(CellRow(key=f"k{i}", status="done", attack=attack, defense=defense, batch_size=b,
                               sample=sample, seed=0, config=CFG, psnr=psnr, ssim=psnr / 40, mse=mse, lpips=lpips,
                               label_acc=1.0, seconds=2.0, images_path=write_images(run_dir, f"c{i}", b, 0.1)))
    store.add_cell(CellRow(key="f0", status="failed", attack="ig", defense="prune:0.9", batch_size=1, sample=2,
                           seed=0, config=CFG, error="boom"))
    if utility:
        base = {"dataset": "embedded", "model": "lenet", "rounds": 300, "batch_size": 8, "seed": 0}
        for defense, loss, acc in (("none", 0.40, 0.75), ("prune:0.9", 0.55, 0.70), ("noise:0.01", 0.39, 0.80)):
            store.add_utility(UtilityRow(f"u/{defense}", defense, "embedded", "lenet", loss, acc, 3.0,
                                         {**base, "defense": defense}))
        # a baseline of another training setting must not be used
        store.add_utility(UtilityRow("u/none-other", "none", "embedded", "lenet", 9.0, 0.1, 3.0,
                                     {**base, "rounds": 5, "defense": "none"}))
    return store


@pytest.fixture
def store(tmp_path):
    s = fill(tmp_path)
    yield s
    s.close()


def rows_by(table):
    return {(r.defense, r.batch_size): r for r in table}


def test_parse_defense_label():
    assert A.parse_defense_label("none") == A.DefenseName("none", "none", "", None)
    assert A.parse_defense_label("prune:0.9") == A.DefenseName("prune:0.9", "prune", "0.9", 0.9)
    assert A.parse_defense_label("prune-global:0.5").family == "prune-global"
    d = A.parse_defense_label("dpsgd:C=1,sigma=1.1")
    assert (d.family, d.strength, d.value) == ("dpsgd", "C=1,sigma=1.1", 1.1)
    chain = A.parse_defense_label("dpsgd:C=1,sigma=1.1 + prune:0.9")
    assert (chain.family, chain.strength, chain.value) == ("dpsgd + prune", "C=1,sigma=1.1 + 0.9", None)
    assert A.parse_defense_label("clip:1e+06").value == 1e6


def test_strongest_attack_is_the_one_with_the_highest_mean_psnr(store):
    table = A.strongest_attack_table(store)
    rows = rows_by(table)
    assert set(rows) == {("none", 1), ("prune:0.9", 1), ("noise:0.01", 4), ("dpsgd:C=1,sigma=1.1", 1)}
    none = rows[("none", 1)]
    assert (none.attack, none.psnr, none.n_samples, none.n_attacks) == ("dlg", 32.0, 2, 2)
    assert none.mse == pytest.approx(0.0007)  # dlg's mean, the lower one
    assert none.rmse == pytest.approx((math.sqrt(0.001) + math.sqrt(0.0004)) / 2)
    assert none.lpips is None and none.failed == 0
    prune = rows[("prune:0.9", 1)]
    assert (prune.attack, prune.psnr, prune.family, prune.strength, prune.strength_value) == \
        ("ig", 17.0, "prune", "0.9", 0.9)
    assert prune.lpips == pytest.approx(0.3) and prune.lpips_attack == "ig"
    assert prune.mse == pytest.approx(0.02) and prune.failed == 1
    assert {s.attack: s.psnr for s in prune.attacks} == {"dlg": 13.0, "ig": 17.0}
    noise = rows[("noise:0.01", 4)]
    # by PSNR dlg is strongest; by MSE ig is: each metric is reported at its own optimum
    assert (noise.attack, noise.psnr, noise.mse, noise.rmse_attack) == ("dlg", 20.0, 0.009, "ig")
    dp = rows[("dpsgd:C=1,sigma=1.1", 1)]
    assert dp.mse is None and dp.rmse == pytest.approx(10 ** (-11 / 20))  # RMSE derived from PSNR
    # no defense first, then families alphabetically
    assert [r.defense for r in table][0] == "none"


def test_ranking_by_another_metric(store):
    rows = rows_by(A.strongest_attack_table(store, metric="mse"))
    assert rows[("noise:0.01", 4)].attack == "ig"
    with pytest.raises(ConfigError, match="unknown metric"):
        A.strongest_attack_table(store, metric="accuracy")


def test_settings_are_not_pooled(tmp_path):
    with ResultsStore(tmp_path) as s:
        for i, (model, psnr) in enumerate((("lenet", 30.0), ("convnet", 10.0))):
            s.add_cell(CellRow(key=f"x{i}", status="done", attack="dlg", defense="none", batch_size=1, sample=0,
                               seed=0, config={"data": {"name": "embedded"}, "model": {"name": model}}, psnr=psnr))
        table = A.strongest_attack_table(s)
    assert sorted((r.setting, r.psnr) for r in table) == [("embedded/convnet", 10.0), ("embedded/lenet", 30.0)]


def test_privacy_utility_join(store):
    points = {(p.defense, p.batch_size): p for p in A.privacy_utility_points(store)}
    prune = points[("prune:0.9", 1)]
    assert prune.final_train_loss == 0.55 and prune.baseline_train_loss == 0.40
    assert prune.utility_loss == pytest.approx(0.15) and prune.accuracy_drop == pytest.approx(0.05)
    assert prune.rmse == pytest.approx(rows_by(A.strongest_attack_table(store))[("prune:0.9", 1)].rmse)
    assert prune.utility_key == "u/prune:0.9"
    assert points[("noise:0.01", 4)].utility_loss == pytest.approx(-0.01)
    assert points[("none", 1)].utility_loss == 0.0
    dp = points[("dpsgd:C=1,sigma=1.1", 1)]  # utility not measured: the point has no x
    assert dp.utility_loss is None and dp.final_train_loss is None and dp.rmse is not None


def test_utility_losses_use_the_baseline_of_the_same_setting(store):
    rows = {r["key"]: r for r in A.utility_losses(store)}
    assert rows["u/prune:0.9"]["utility_loss"] == pytest.approx(0.15)
    assert rows["u/none-other"]["utility_loss"] == 0.0


def test_best_reconstruction_per_defense_is_the_highest_psnr_cell(store):
    best = {(b.defense, b.batch_size): b.cell for b in A.best_reconstructions(store)}
    assert (best[("none", 1)].attack, best[("none", 1)].psnr) == ("dlg", 34.0)
    assert (best[("prune:0.9", 1)].attack, best[("prune:0.9", 1)].sample) == ("ig", 1)


def test_write_tables_markdown_and_csv(store, tmp_path):
    paths = write_tables(store, tmp_path / "tables")
    assert set(paths) == {f"{n}_{e}" for n in ("strongest_attack", "privacy_utility", "utility") for e in ("md", "csv")}
    md = paths["strongest_attack_md"].read_text().splitlines()
    assert md[0].startswith("| defense | family | strength | B | strongest attack | PSNR (dB, max) |")
    assert "setting" not in md[0]  # one setting only: the column is hidden
    prune_line = next(line for line in md if line.startswith("| prune:0.9 "))
    cells = [c.strip() for c in prune_line.strip("|").split("|")]
    assert cells[:7] == ["prune:0.9", "prune", "0.9", "1", "ig", "17.00", "0.425"]
    none_line = next(line for line in md if line.startswith("| none "))
    assert "| - |" in none_line  # LPIPS not measured
    rows = list(csv.DictReader(io.StringIO(paths["strongest_attack_csv"].read_text())))
    byd = {r["defense"]: r for r in rows}
    assert byd["prune:0.9"]["attack"] == "ig" and float(byd["prune:0.9"]["psnr"]) == 17.0
    assert byd["none"]["lpips"] == "" and byd["none"]["setting"] == "embedded/lenet"
    pu = {r["defense"]: r for r in csv.DictReader(io.StringIO(paths["privacy_utility_csv"].read_text()))}
    assert float(pu["prune:0.9"]["utility_loss"]) == pytest.approx(0.15)
    assert pu["dpsgd:C=1,sigma=1.1"]["utility_loss"] == ""
    pmd = paths["privacy_utility_md"].read_text()
    assert "| utility loss |" in pmd and "+0.1500" in pmd
    assert "u/none-other" in paths["utility_csv"].read_text()


def test_empty_store_gives_empty_tables(tmp_path):
    with ResultsStore(tmp_path) as s:
        assert A.strongest_attack_table(s) == [] and A.privacy_utility_points(s) == []
        paths = write_tables(s, tmp_path / "t")
    assert paths["strongest_attack_md"].read_text().count("\n") == 2  # header and alignment only


def test_the_none_point_uses_the_main_training_setting(store):
    """Two no-defense utility runs (300 and 5 rounds): the study's main setting (more defenses) is shown."""
    none = next(p for p in A.privacy_utility_points(store) if p.defense == "none")
    assert none.final_train_loss == 0.40 and none.utility_key == "u/none"


def test_the_strongest_attack_row_counts_its_under_fit_cells(tmp_path):
    store = ResultsStore(tmp_path)
    fits = [{"underfit": True, "closed": 0.16}, {"underfit": False, "closed": 0.97, "recovered_nothing": True}, None]
    for i, fit in enumerate(fits):  # three cells of one attack: one under-fit, one fit (and blank), one without
        store.add_cell(CellRow(key=f"k{i}", status="done", attack="ig", defense="none", batch_size=1, sample=i,
                               seed=0, config=CFG, psnr=11.0, metrics={} if fit is None else {"fit": fit}))
    store.add_cell(CellRow(key="d", status="done", attack="dlg", defense="none", batch_size=1, sample=0, seed=0,
                           config=CFG, psnr=9.0, metrics={"fit": {"underfit": True, "closed": 0.1}}))
    row = A.strongest_attack_table(store)[0]
    assert row.attack == "ig" and row.underfit == 1 and row.recovered_nothing == 1
    assert {s.attack: s.underfit for s in row.attacks} == {"dlg": 1, "ig": 1}
    store.close()
