"""One self-contained HTML page of a sweep: ``RUN_DIR/report.html``.

Sections: the sweep summary (cells done / failed, attacks, defenses, batch sizes), the strongest attack per
defense (seed 002 Eq. 3), the privacy-utility table and plot (seed 002 Table 5 and Fig. 3; "utility not measured"
when the utility table is empty), the training curves, the best reconstruction of every defense (ground truth
above the reconstruction, PSNR under each image) and the failed cells with their errors.

Self-contained: every image is a ``data:`` URI (PNG, base64), styles and the one script are inline, and a
Content-Security-Policy forbids the page from loading anything else, so it opens offline and can be mailed as
one file. The inline script checks, once the page has loaded, that every image decoded and records the result in
``<body data-images-ok="true|false">`` (the test suite reads it back from a headless browser).

Next to the page, ``RUN_DIR/report/`` holds the tables (Markdown, CSV), the plots (PNG, SVG) and the grids (PNG).
"""

from __future__ import annotations

import base64
import html
import math
import time
from pathlib import Path
from typing import Any, Optional

from ..checks import check_existing_run_dir, check_output_dir, check_output_files
from ..data.image_grid import save_reconstruction_grid
from ..evaluation.analysis import (POINT_COLUMNS, STRONGEST_COLUMNS, UTILITY_COLUMNS, BestCell, best_reconstructions,
                                   privacy_utility_points, strongest_attack_table, utility_losses)
from ..evaluation.store import ResultsStore
from .tables import drop_empty_setting, format_value, write_tables
from .plots import X_LABEL, Y_LABEL, privacy_utility_plot, strongest_attack_plot, utility_curves_plot

REPORT_NAME = "report.html"
ASSETS_DIR = "report"
#: At most this many images of a batch are shown in a grid.
MAX_GRID_IMAGES = 8

_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
        "base-uri 'none'; form-action 'none'")

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
.meta { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.88em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; } th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1em 0; } figcaption { color: #444; font-size: 0.9em; margin-top: 0.3em; }
img { max-width: 100%; height: auto; }
.grids { display: flex; flex-wrap: wrap; gap: 1.2em; }
.grids figure { border: 1px solid #e3e3e3; padding: 0.5em; width: min-content; }
.grids figcaption { min-width: 18em; } .grids img { max-width: none; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.5em 0.8em; }
pre.error { white-space: pre-wrap; max-width: 60em; margin: 0; font-size: 0.85em; }
summary { cursor: pointer; }
"""

_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (img) { return !(img.complete && img.naturalWidth > 0); });
  document.body.dataset.imagesCount = String(imgs.length);
  document.body.dataset.imagesBroken = String(bad.length);
  document.body.dataset.imagesOk = bad.length === 0 ? 'true' : 'false';
});
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _data_uri(path: Path, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _img(path: Path, alt: str) -> str:
    return f'<img src="{_data_uri(path)}" alt="{_e(alt)}">'


def _table(rows: list[Any], columns: list[tuple[str, str, str]], css_class: str = "") -> str:
    cols = drop_empty_setting(columns, rows)
    head = "".join(f"<th>{_e(c[0])}</th>" for c in cols)
    body = []
    for r in rows:
        cells = []
        for _, name, fmt in cols:
            v = r.get(name) if isinstance(r, dict) else getattr(r, name)
            cls = "" if fmt == "s" else ' class="num"'
            cells.append(f"<td{cls}>{_e(format_value(v, fmt))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="{css_class}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _grid_for(best: BestCell, run_dir: Path, out: Path, index: int) -> tuple[Optional[Path], str]:
    """Write the grid PNG of one best cell; (path, caption) or (None, reason) when its images are unusable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ..metrics.image import psnr

    cell = best.cell
    path = (run_dir / cell.images_path) if cell.images_path else None
    if path is None or not path.is_file():
        return None, f"images file missing ({cell.images_path})"
    try:
        tensors = load_file(str(path))
        truth, rec = tensors["truth"].float(), tensors["reconstruction"].float()
    except (SafetensorError, KeyError, OSError, ValueError) as e:
        return None, f"images file unreadable ({cell.images_path}: {e})"
    if truth.dim() != 4 or truth.shape != rec.shape:
        return None, f"images file has truth {list(truth.shape)} and reconstruction {list(rec.shape)}"
    shown = min(MAX_GRID_IMAGES, truth.shape[0])
    truth, rec = truth[:shown].clamp(0, 1), rec[:shown].clamp(0, 1)
    values = psnr(rec, truth)
    caps = [f"{float(v):.1f} dB" for v in values]
    name = f"best_{index:03d}.png"
    grid = save_reconstruction_grid([("truth", truth, None), ("attack", rec, caps)], out / name, scale=3)
    psnr_txt = "-" if cell.psnr is None else f"{cell.psnr:.2f} dB"
    more = "" if shown == best.batch_size else f"; first {shown} of {best.batch_size} images"
    caption = (f"{best.defense}, B = {best.batch_size}: {cell.attack}, sample {cell.sample}, seed {cell.seed}, "
               f"cell PSNR {psnr_txt}{more}")
    return grid, caption


def write_report(run_dir: str | Path, metric: str = "psnr") -> Path:
    """Write ``run_dir/report.html`` (and the tables, plots and grids under ``run_dir/report/``); return its path."""
    run_dir = check_existing_run_dir(run_dir)
    check_output_dir(run_dir / ASSETS_DIR, "the report folder")
    check_output_files(run_dir, ["report.html"])
    assets = _fresh_assets(run_dir / ASSETS_DIR)
    with ResultsStore(run_dir) as store:
        cells = list(store.cells(status=None))
        table = strongest_attack_table(store, metric)
        data = {"cells": cells, "table": table, "points": privacy_utility_points(store, metric, table=table),
                "urows": store.utility(), "util": utility_losses(store), "best": best_reconstructions(store),
                "tables": write_tables(store, assets, metric)}
    plots = {"pu": privacy_utility_plot(data["points"], assets / "privacy_utility"),
             "sa": strongest_attack_plot(table, assets / "strongest_attack"),
             "curves": utility_curves_plot(data["urows"], assets / "utility_curves")}
    title = f"gradaudit report: {run_dir.resolve().name}"
    parts = _head(title, run_dir)
    parts += _summary_section(cells, data["urows"])
    parts += _strongest_section(table, metric, plots["sa"])
    parts += _privacy_section(run_dir, data, plots)
    parts += _grids_section(data["best"], run_dir, assets)
    parts += _failures_section([c for c in cells if c.status == "failed"])
    files = list(data["tables"].values()) + [p for d in plots.values() if d for p in d.values()]
    parts.append("<h2>Files</h2><ul>" + "".join(f"<li><code>{_e(p.relative_to(run_dir))}</code></li>"
                                                for p in files) + "</ul>")
    parts.append("</body></html>\n")
    return write_page(run_dir / REPORT_NAME, parts)


def write_page(out: Path, parts: list[str]) -> Path:
    """Write the joined ``parts`` to ``out`` atomically (a reader never sees half a page); return ``out``."""
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    tmp.replace(out)
    return out


def _fresh_assets(assets: Path) -> Path:
    """The report's asset folder, with the files an earlier report wrote removed (they are all rewritten)."""
    (assets / "grids").mkdir(parents=True, exist_ok=True)
    stale = list((assets / "grids").glob("best_*.png"))
    stale += [assets / f"{stem}.{ext}" for stem in ("privacy_utility", "strongest_attack", "utility_curves")
              for ext in ("png", "svg")]
    for old in stale:
        old.unlink(missing_ok=True)
    return assets


def _head(title: str, run_dir: Path) -> list[str]:
    return ["<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(title)}</title><style>{_STYLE}</style><script>{_SCRIPT}</script></head><body>",
            f"<h1>{_e(title)}</h1>",
            f'<p class="meta">Run folder <code>{_e(run_dir.resolve())}</code>, generated '
            f'{_e(time.strftime("%Y-%m-%d %H:%M:%S"))}.</p>']


def _summary_section(cells, urows) -> list[str]:
    seconds = sum(c.seconds for c in cells if c.seconds is not None and math.isfinite(c.seconds))
    summary = [("cells done", sum(c.status == "done" for c in cells)),
               ("cells failed", sum(c.status == "failed" for c in cells)),
               ("attacks", ", ".join(sorted({c.attack for c in cells})) or "-"),
               ("defenses", ", ".join(sorted({c.defense for c in cells})) or "-"),
               ("batch sizes", ", ".join(map(str, sorted({c.batch_size for c in cells}))) or "-"),
               ("attack time (s, sum over cells)", f"{seconds:.1f}"), ("utility runs", len(urows)),
               ("LPIPS", "measured" if any(c.lpips is not None for c in cells) else "not measured (no weights)")]
    return ["<h2>Sweep summary</h2>",
            "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in summary) + "</table>"]


def _strongest_section(table, metric: str, sa_plot) -> list[str]:
    out = ['<h2 id="strongest">Strongest attack per defense</h2>',
           "<p>For every defense D at strength s and batch size B, the attack with the highest mean "
           f"{_e(metric.upper())} over its samples (seed 002 Eq. 3: err(D, s) = min over attacks of the "
           "reconstruction error). Each metric column is that metric's optimum over attacks; n counts the "
           "strongest attack's finished cells.</p>"]
    out.append(_table(table, STRONGEST_COLUMNS, "strongest") if table else '<p class="note">No finished cells yet.</p>')
    if sa_plot:
        out.append(f"<figure>{_img(sa_plot['png'], 'PSNR of the strongest attack against defense strength')}"
                   "<figcaption>PSNR of the strongest attack against defense strength, one panel per defense "
                   "family; dashed: no defense.</figcaption></figure>")
    return out


def _privacy_section(run_dir: Path, data: dict, plots: dict) -> list[str]:
    out = ['<h2 id="privacy-utility">Privacy and utility</h2>']
    if not data["urows"]:
        return out + ['<p class="note">Utility not measured: the utility table of this run is empty. Measure it '
                      f"with <code>gradaudit utility --out {_e(run_dir)} --defense SPEC ...</code> and rebuild the "
                      "report.</p>"]
    out.append("<p>Utility loss = final training loss with the defense minus that without (seed 002 Table 5); "
               "reconstruction error = RMSE of the strongest attack (pixels in [0, 1]).</p>")
    points, pu_plot = data["points"], plots["pu"]
    out.append(_table(points, POINT_COLUMNS, "privacy-utility") if points else
               '<p class="note">No finished attack cells yet: the points need the strongest attack per defense.</p>')
    if pu_plot:
        out.append(f"<figure>{_img(pu_plot['png'], 'privacy-utility plot')}<figcaption>y: "
                   f"{_e(Y_LABEL.replace(chr(10), ' '))}; x: {_e(X_LABEL)}. Colour: defense; marker: batch size; "
                   "label: strength. Up and to the left is better.</figcaption></figure>")
    elif points:
        out.append('<p class="note">No defense has both a reconstruction error and a utility loss yet (a '
                   "no-defense utility run is needed as the baseline).</p>")
    out += ["<h3>Utility runs</h3>", _table(data["util"], UTILITY_COLUMNS, "utility")]
    if plots["curves"]:
        out.append(f"<figure>{_img(plots['curves']['png'], 'training curves')}<figcaption>Mean training loss per "
                   "round of every utility run.</figcaption></figure>")
    return out


def _grids_section(best, run_dir: Path, assets: Path) -> list[str]:
    out = ['<h2 id="reconstructions">Best reconstruction per defense</h2>']
    if not best:
        return out + ['<p class="note">No reconstruction images stored.</p>']
    out += ["<p>The single best reconstruction (highest PSNR over attacks, samples and seeds) of every defense "
            "and batch size: ground truth above, reconstruction below, PSNR under each image.</p>", '<div class="grids">']
    for i, b in enumerate(best):
        grid, caption = _grid_for(b, run_dir, assets / "grids", i)
        if grid is None:
            out.append(f'<figure><p class="note">{_e(b.defense)}, B = {b.batch_size}: {_e(caption)}</p></figure>')
        else:
            out.append(f"<figure>{_img(grid, caption)}<figcaption>{_e(caption)}</figcaption></figure>")
    return out + ["</div>"]


def _failures_section(failed_cells) -> list[str]:
    out = ['<h2 id="failed">Failed cells</h2>']
    if not failed_cells:
        return out + ["<p>None.</p>"]
    out.append("<table><thead><tr><th>key</th><th>attack</th><th>defense</th><th>B</th><th>sample</th><th>seed</th>"
               "<th>attempts</th><th>error</th></tr></thead><tbody>")
    for c in failed_cells:
        out.append(f"<tr><td><code>{_e(c.key)}</code></td><td>{_e(c.attack)}</td><td>{_e(c.defense)}</td>"
                   f'<td class="num">{c.batch_size}</td><td class="num">{c.sample}</td><td class="num">{c.seed}</td>'
                   f'<td class="num">{c.attempts}</td><td><pre class="error">{_e(c.error or "-")}</pre></td></tr>')
    return out + ["</tbody></table>"]


def report_files(run_dir: str | Path) -> dict[str, Path]:
    """The files :func:`write_report` leaves in ``run_dir`` (those that exist)."""
    run_dir = Path(run_dir)
    assets = run_dir / ASSETS_DIR
    candidates = {"report": run_dir / REPORT_NAME}
    for stem, short in (("strongest_attack", "strongest"), ("privacy_utility", "priv-util"), ("utility", "utility")):
        candidates[f"{short} md"] = assets / f"{stem}.md"
        candidates[f"{short} csv"] = assets / f"{stem}.csv"
    for stem, short in (("strongest_attack", "strongest"), ("privacy_utility", "priv-util"),
                        ("utility_curves", "curves")):
        candidates[f"{short} png"] = assets / f"{stem}.png"
        candidates[f"{short} svg"] = assets / f"{stem}.svg"
    candidates["grids"] = assets / "grids"
    return {k: p for k, p in candidates.items() if p.exists()}
