"""Privacy-utility figure (seed 002 Fig. 3) and its companions: files, valid PNG, SVG with readable text."""

from __future__ import annotations

from PIL import Image

from gradaudit.evaluation.store import UtilityRow
from gradaudit.report import plots


def point(defense, family, strength, value, b, rmse, uloss):
    return {"defense": defense, "family": family, "strength": strength, "strength_value": value, "batch_size": b,
            "rmse": rmse, "utility_loss": uloss, "psnr": 20.0}


POINTS = [
    point("none", "none", "", None, 1, 0.01, 0.0),
    point("prune:0.5", "prune", "0.5", 0.5, 1, 0.05, 0.01), point("prune:0.9", "prune", "0.9", 0.9, 1, 0.15, 0.16),
    point("noise:0.01", "noise", "0.01", 0.01, 1, 0.08, 0.00), point("noise:0.1", "noise", "0.1", 0.1, 4, 0.22, 0.3),
    point("clip:4", "clip", "4", 4.0, 4, 0.03, 0.02),
    point("dpsgd:C=1,sigma=1.1", "dpsgd", "C=1,sigma=1.1", 1.1, 1, 0.3, None),  # no utility: not drawn
]


def check_png(path):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200


def test_privacy_utility_plot_writes_png_and_svg(tmp_path):
    out = plots.privacy_utility_plot(POINTS, tmp_path / "figs" / "pu")
    assert set(out) == {"png", "svg"}
    assert out["png"] == tmp_path / "figs" / "pu.png"
    check_png(out["png"])
    svg = out["svg"].read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    for text in ("prune", "noise", "clip", "none", "B = 1", "B = 4", "0.9", "0.01", "strongest attack",
                 "utility loss"):
        assert text in svg, text
    assert "dpsgd" not in svg  # a point without utility is not plotted


def test_privacy_utility_plot_without_any_utility_writes_nothing(tmp_path):
    pts = [dict(p, utility_loss=None) for p in POINTS]
    assert plots.privacy_utility_plot(pts, tmp_path / "pu") is None
    assert not list(tmp_path.iterdir())


def test_strongest_attack_plot_one_panel_per_family(tmp_path):
    rows = [dict(p, psnr=30 - 10 * p["rmse"]) for p in POINTS]
    out = plots.strongest_attack_plot(rows, tmp_path / "sa")
    check_png(out["png"])
    svg = out["svg"].read_text()
    for family in ("prune", "noise", "clip", "dpsgd", "none, B = 1"):
        assert family in svg


def test_utility_curves_plot(tmp_path):
    rows = [UtilityRow("k1", "none", "embedded", "lenet", 0.1, 0.5, 1.0, {"curve": [[0, 4.0], [10, 1.0], [20, 0.1]]}),
            UtilityRow("k2", "prune:0.9", "embedded", "lenet", 0.3, 0.4, 1.0, {"curve": [[0, 4.0], [20, 0.3]]}),
            UtilityRow("k3", "noise:1", "embedded", "lenet", None, None, 1.0, {})]
    out = plots.utility_curves_plot(rows, tmp_path / "curves")
    check_png(out["png"])
    assert "prune:0.9" in out["svg"].read_text()
    assert plots.utility_curves_plot(rows[2:], tmp_path / "none") is None
