"""The HTML report: one self-contained page, checked as text and (when installed) in headless Chromium."""

from __future__ import annotations

import base64
import io
import re
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from gradaudit.cli import main
from gradaudit.errors import ConfigError
from gradaudit.evaluation.store import CellRow, ResultsStore, UtilityRow
from gradaudit.report.html import write_report

CHROMIUM = Path("/usr/bin/chromium")
CFG = {"data": {"name": "embedded"}, "model": {"name": "lenet"}}
DEFENSES = {"none": 0.02, "prune:0.9": 0.15, "noise:0.01": 0.08, "dpsgd:C=1,sigma=1.1": 0.3}
ERROR = "RuntimeError: <script>alert('x')</script> & worse"


def build_run(run_dir: Path, utility: bool = True, lpips: bool = False) -> Path:
    g = torch.Generator().manual_seed(0)
    with ResultsStore(run_dir) as store:
        i = 0
        for defense, level in DEFENSES.items():
            for b in (1, 3):
                for attack, extra in (("dlg", 0.05), ("inverting-gradients", 0.0)):
                    truth = torch.rand(b, 3, 8, 8, generator=g)
                    rec = (truth + (level + extra) * torch.randn(truth.shape, generator=g)).clamp(0, 1)
                    mse = float(((rec - truth) ** 2).mean())
                    rel = f"images/{i}.safetensors"
                    (run_dir / "images").mkdir(exist_ok=True)
                    save_file({"truth": truth, "reconstruction": rec}, str(run_dir / rel))
                    psnr = -10 * torch.log10(torch.tensor(mse)).item()
                    store.add_cell(CellRow(key=f"c{i}", status="done", attack=attack, defense=defense, batch_size=b,
                                           sample=0, seed=0, config=CFG, psnr=psnr, ssim=0.5, mse=mse,
                                           lpips=0.3 if lpips else None, label_acc=1.0, seconds=1.5,
                                           images_path=rel))
                    i += 1
        store.add_cell(CellRow(key="failed-1", status="failed", attack="gradinversion", defense="noise:0.01",
                               batch_size=3, sample=1, seed=0, config=CFG, error=ERROR, attempts=2))
        if utility:
            base = {"dataset": "embedded", "model": "lenet", "rounds": 300, "batch_size": 8, "seed": 0}
            for defense, loss in (("none", 0.2), ("prune:0.9", 0.35), ("noise:0.01", 0.21)):
                curve = [[0, 4.4], [150, 1.0], [300, loss]]
                store.add_utility(UtilityRow(f"u/{defense}", defense, "embedded", "lenet", loss, 0.5, 3.0,
                                             {**base, "defense": defense, "curve": curve}))
    return run_dir


def data_uri_images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_report_is_self_contained_and_complete(tmp_path):
    run = build_run(tmp_path / "run")
    path = write_report(run)
    assert path == run / "report.html"
    page = path.read_text()
    # nothing loaded from anywhere: no remote or relative src/href, images are data URIs
    assert not re.search(r'(src|href)\s*=\s*["\']?\s*(https?:|//)', page, re.I)
    assert not re.search(r"url\(\s*['\"]?(https?:|//)", page, re.I)
    assert "@import" not in page and "<link" not in page
    for m in re.finditer(r'\b(src|href)\s*=\s*"([^"]*)"', page):
        assert m.group(2).startswith("data:image/png;base64,") or m.group(2).startswith("#"), m.group(0)
    assert "Content-Security-Policy" in page
    for defense in DEFENSES:
        assert defense in page
    for heading in ("Sweep summary", "Strongest attack per defense", "Privacy and utility", "Utility runs",
                    "Best reconstruction per defense", "Failed cells"):
        assert heading in page
    assert "cells done</th><td>16<" in page and "cells failed</th><td>1<" in page
    assert "strongest attack" in page and "utility loss" in page and "+0.1500" in page  # prune's utility loss
    # the error is shown, escaped
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; worse" in page
    assert "<script>alert" not in page
    images = data_uri_images(page)
    # 3 plots + one grid per (defense, batch size)
    assert len(images) == 3 + 2 * len(DEFENSES)
    for raw in images:
        with Image.open(io.BytesIO(raw)) as im:
            im.verify()
    assert "LPIPS (min)" in page and "not measured (no weights)" in page
    # files next to the page
    for name in ("strongest_attack.md", "strongest_attack.csv", "privacy_utility.md", "privacy_utility.csv",
                 "privacy_utility.png", "privacy_utility.svg", "utility_curves.png"):
        assert (run / "report" / name).is_file(), name
    assert len(list((run / "report" / "grids").glob("best_*.png"))) == 2 * len(DEFENSES)


def test_report_without_utility_and_with_lpips(tmp_path):
    run = build_run(tmp_path / "run", utility=False, lpips=True)
    page = write_report(run).read_text()
    assert "Utility not measured" in page and "gradaudit utility --out" in page
    assert "0.300" in page and "not measured (no weights)" not in page
    assert len(data_uri_images(page)) == 1 + 2 * len(DEFENSES)  # strength plot + grids, no utility plots
    assert not (run / "report" / "privacy_utility.png").exists()


def test_report_survives_missing_or_broken_image_files(tmp_path):
    run = build_run(tmp_path / "run", utility=False)
    for p in sorted((run / "images").glob("*.safetensors"))[::2]:
        p.unlink()
    for p in sorted((run / "images").glob("*.safetensors"))[:1]:
        p.write_bytes(b"not a safetensors file")
    page = write_report(run).read_text()
    assert "images file missing" in page or "images file unreadable" in page


def test_report_of_an_empty_or_missing_run(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        write_report(tmp_path / "nothing")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ConfigError, match="holds no results.sqlite"):
        write_report(tmp_path / "nothing")
    assert not any((tmp_path / "nothing").iterdir())  # nothing created
    ResultsStore(tmp_path / "empty").close()
    page = write_report(tmp_path / "empty").read_text()
    assert "No finished cells yet" in page and "Utility not measured" in page
    with ResultsStore(tmp_path / "utility-only") as store:  # utility measured, no attack yet
        store.add_utility(UtilityRow("u/none", "none", "embedded", "lenet", 0.2, 0.5, 1.0, {"curve": [[0, 1.0]]}))
    page = write_report(tmp_path / "utility-only").read_text()
    assert "No finished attack cells yet" in page and "Utility runs" in page and "0.2000" in page


def test_report_command(tmp_path, capsys):
    run = build_run(tmp_path / "run")
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "report.html" in out and "strongest_attack.md" in out and "privacy_utility.svg" in out
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["report", str(run), "--metric", "bogus"]) == 2


def test_report_loads_in_headless_chromium(tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("chromium not installed; make test installs it when run as root")
    run = build_run(tmp_path / "run")
    path = write_report(run)
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
           f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
           "--virtual-time-budget=5000", "--dump-dom", path.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    dom, log = proc.stdout, proc.stderr
    assert proc.returncode == 0, log[-2000:]
    assert "Strongest attack per defense" in dom  # the page loaded and rendered
    body = re.search(r"<body[^>]*>", dom).group(0)
    n_images = 3 + 2 * len(DEFENSES)
    assert f'data-images-count="{n_images}"' in body, body
    assert 'data-images-broken="0"' in body and 'data-images-ok="true"' in body, body
    # no script error, no console message at all (a blocked external resource would log a CSP violation)
    assert "Uncaught" not in log
    console = [line for line in log.splitlines() if ":CONSOLE" in line]
    assert not console, console
