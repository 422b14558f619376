"""The demo command end to end, shortened (--iterations 3): files written, summary printed, exit 0."""

import json

from PIL import Image

from gradaudit.cli import main


def test_demo_writes_grid_metrics_config(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--iterations", "3"]) == 0
    printed = capsys.readouterr().out
    assert "grid.png" in printed and "PSNR" in printed and "noise:0.01" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert [s["label"] for s in metrics["summary"]] == ["no defense", "noise:0.01"]
    assert len(metrics["runs"]) == 8 and all(len(r["scores"]["psnr"]) == 1 for r in metrics["runs"])
    assert all(r["reconstruction"]["label_source"] == "idlg" for r in metrics["runs"])
    assert (out / "config.yaml").read_text().startswith("runs:")
    grid = Image.open(out / "grid.png")
    assert grid.width > 4 * 32 * 4 and grid.height > 3 * 32 * 4  # 4 columns, 3 rows, upscaled x4
    assert len(list((out / "observations").glob("*.safetensors"))) == 8
