"""Seed 002's two-layer directions, measured on a tiny grid (``gradaudit bounds``).

Default grid (d = 20, m = 4000, B = 4 at the base; 3 seeds; 9 s on one thread, load ~7): exponents
span/moment vs m -0.51 (the 1/sqrt(m) of the moment estimate), vs d +0.63; feature error vs B +0.58 (moment),
+1.11 (gradients); dropout p at m0 = 4000 matches no defense at width (1-p) m0 for the moment subspace (span
0.067 / 0.089 / 0.128 vs 0.070 / 0.109 / 0.163 at p = 0.5 / 0.75 / 0.875); pruning p = 0.99 takes the span error
from 0.056 to 0.59 (moment) and from 2e-8 to 0.80 (gradients), random directions 0.91.
"""

from __future__ import annotations

import csv
import math

import pytest

from gradaudit.cli import main
from gradaudit.errors import ConfigError
from gradaudit.theory.two_layer import BoundsConfig, dropout_equivalence, fit_exponent, measure_point, run_bounds

TINY = dict(d=16, width=2000, batch=4, seeds=2, d_values=(8, 32), width_values=(500, 4000), batch_values=(2, 8),
            dropout=(0.75,), noise=(0.3, 3.0), prune=(0.99,))


@pytest.fixture(scope="module")
def tiny(single_thread):
    return run_bounds(BoundsConfig(**TINY))


def _exp(result, axis, error):
    return next(e for e in result.exponents if e["axis"] == axis and e["error"] == error)


def test_fit_exponent_recovers_a_power_law():
    xs = [1, 2, 4, 8, 16]
    slope, r2 = fit_exponent(xs, [3 * x ** -0.5 for x in xs])
    assert slope == pytest.approx(-0.5) and r2 == pytest.approx(1.0)
    assert math.isnan(fit_exponent([1], [1])[0])


def test_exponent_signs_follow_the_seed(tiny):
    for error in ("span/moment", "feature/moment"):
        assert _exp(tiny, "m", error)["exponent"] < -0.2         # measured -0.5 on the default grid
    assert _exp(tiny, "d", "span/moment")["exponent"] > 0.2       # measured +0.63
    for error in ("feature/moment", "feature/gradients"):
        assert _exp(tiny, "B", error)["exponent"] > 0.2
    assert _exp(tiny, "noise", "span/gradients")["exponent"] > 0.5  # ~ linear in sigma
    assert _exp(tiny, "dropout", "span/moment")["exponent"] < 0
    # the gradient span is exact without a defense: no exponent is fitted to float noise
    assert _exp(tiny, "m", "span/gradients")["exponent"] is None
    prune = {r["value"]: r for r in tiny.axis_rows("prune")}
    assert prune[0.99]["span/gradients"] > 0.5 > 1e-6 > prune[0.0]["span/gradients"]
    assert prune[0.99]["span/moment"] > 3 * prune[0.0]["span/moment"]
    # dropout p at m0 is close to no defense at width (1-p) m0 (moment subspace): within a factor 2
    ((p, eff, with_dropout, without),) = dropout_equivalence(tiny, "span/moment")
    assert (p, eff) == (0.75, 500) and 0.5 < with_dropout / without < 2


def test_measure_point_applies_the_defense_through_parse_defense(single_thread):
    clean = measure_point(12, 600, 3, 0, subspaces=("gradients",))
    noisy = measure_point(12, 600, 3, 0, "noise", 1.0, subspaces=("gradients",))
    assert clean["span/gradients"] < 1e-6 < noisy["span/gradients"]
    assert 0.5 < clean["random"] <= 1.0
    with pytest.raises(ConfigError):
        BoundsConfig(d_values=(2,), batch_values=(4,)).validate()
    with pytest.raises(ConfigError):
        BoundsConfig(subspaces=("pca",)).validate()


def test_cli_bounds_writes_table_csv_and_plot(tmp_path, capsys, single_thread):
    out = tmp_path / "b"
    assert main(["bounds", "--out", str(out), "--seeds", "1", "--d", "8,16", "--m", "500,1000", "--batch", "2,4",
                 "--dropout", "0.5", "--noise", "1", "--prune", "0.9", "--subspace", "moment"]) == 0
    text = capsys.readouterr().out
    assert "exponents" in text and "shrinks" in text and "Dropout" in text
    rows = list(csv.DictReader((out / "bounds.csv").open()))
    assert {r["axis"] for r in rows} == {"d", "m", "B", "dropout", "noise", "prune"}
    assert all(0 <= float(r["span/moment"]) <= 1 for r in rows)
    assert (out / "bounds.png").stat().st_size > 10_000 and (out / "exponents.csv").is_file()
    assert main(["bounds", "--out", str(out), "--d", "2", "--batch", "4"]) == 2
