"""The per-round leakage table of an audited federated run, and its self-contained HTML page.

From the ``audit`` table of a results store (:class:`~gradaudit.integrations.audit.AuditStore`):

* :func:`leakage_table` - one row per audited (round, client): B, K, lr, the attack's PSNR / SSIM / label
  accuracy against the private batch (when the ground truth was known), the update norm
  ||theta_0 - theta_K||, the mean vulnerability proxies of the client's samples (``grad_norm`` and LAVP
  ``cosine_max`` / ``l2_max`` when computed), the reported DP epsilon, and the audit's time;
* :func:`round_table` - one row per round: clients audited, the most exposed client (highest PSNR) and the
  mean PSNR over the audited clients;
* :func:`write_audit_report` - both tables as Markdown and CSV under ``RUN_DIR/audit-report/`` and
  ``RUN_DIR/audit-report.html`` (the styles and the offline, data-URI-only page of
  :mod:`gradaudit.report.html`) with each audited client's private batch above its reconstruction.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Optional

from ..errors import ConfigError
from ..checks import STORE_NAME
from ..data.image_grid import save_reconstruction_grid
from .tables import format_value, to_csv, to_markdown
from .html import _CSP, _SCRIPT, _STYLE, MAX_GRID_IMAGES, _e, _img
from ..integrations.audit import AuditRow, AuditStore

REPORT_NAME = "audit-report.html"
ASSETS_DIR = "audit-report"

LEAKAGE_COLUMNS: list[tuple[str, str, str]] = [
    ("round", "round", "d"), ("client", "client", "s"), ("B", "batch_size", "d"), ("K", "local_steps", "d"),
    ("lr", "local_lr", "g"), ("attack", "attack", "s"), ("PSNR (dB)", "psnr", ".2f"), ("SSIM", "ssim", ".3f"),
    ("label acc", "label_acc", ".2f"), ("update norm", "update_norm", ".4g"),
    ("proxy grad_norm", "grad_norm", ".4g"), ("proxy cosine_max", "cosine_max", ".4g"),
    ("proxy l2_max", "l2_max", ".4g"), ("DP epsilon", "epsilon", ".3g"), ("audit s", "seconds", ".1f"),
    ("status", "status", "s"),
]
ROUND_COLUMNS: list[tuple[str, str, str]] = [
    ("round", "round", "d"), ("clients audited", "clients", "d"), ("failed", "failed", "d"),
    ("most exposed client", "worst_client", "s"), ("max PSNR (dB)", "max_psnr", ".2f"),
    ("mean PSNR (dB)", "mean_psnr", ".2f"), ("mean SSIM", "mean_ssim", ".3f"),
]


def _rows(store: AuditStore, run: Optional[str]) -> tuple[str, list[AuditRow]]:
    runs = store.audit_runs()
    if not runs:
        raise ConfigError(f"'{store.run_dir}' has no audited updates (the audit table is empty)")
    run = run if run is not None else runs[-1]
    if run not in runs:
        from ..errors import unknown_name

        raise unknown_name("audit run", run, runs)
    return run, list(store.audits(run=run))


def leakage_table(store: AuditStore, run: Optional[str] = None) -> list[dict[str, Any]]:
    """One dict per audited (round, client) of ``run`` (default: the latest), sorted by round then client."""
    from ..integrations.audit import _natural

    _, rows = _rows(store, run)
    out = []
    for r in rows:
        proxy = (r.metrics.get("proxy") or {}).get("mean") or {}
        out.append({"round": r.round, "client": r.client, "batch_size": r.batch_size, "local_steps": r.local_steps,
                    "local_lr": r.local_lr, "attack": r.attack, "psnr": r.psnr, "ssim": r.ssim,
                    "label_acc": r.label_acc, "update_norm": r.update_norm, "grad_norm": proxy.get("grad_norm"),
                    "cosine_max": proxy.get("cosine_max"), "l2_max": proxy.get("l2_max"), "epsilon": r.epsilon,
                    "seconds": r.seconds, "status": r.status, "error": r.error, "key": r.key,
                    "images_path": r.images_path})
    return sorted(out, key=lambda d: (d["round"], _natural(d["client"])))


def round_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per round: audited clients, failures, the client with the highest PSNR, mean PSNR and SSIM."""
    out = []
    for rnd in sorted({r["round"] for r in rows}):
        rr = [r for r in rows if r["round"] == rnd]
        scored = [r for r in rr if r["psnr"] is not None and math.isfinite(r["psnr"])]
        worst = max(scored, key=lambda r: r["psnr"]) if scored else None
        ssim = [r["ssim"] for r in scored if r["ssim"] is not None]
        out.append({"round": rnd, "clients": len(rr), "failed": sum(r["status"] == "failed" for r in rr),
                    "worst_client": worst["client"] if worst else None,
                    "max_psnr": worst["psnr"] if worst else None,
                    "mean_psnr": sum(r["psnr"] for r in scored) / len(scored) if scored else None,
                    "mean_ssim": sum(ssim) / len(ssim) if ssim else None})
    return out


def _shown(columns: list[tuple[str, str, str]], rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """Drop optional columns that no row has (no proxy, no epsilon)."""
    optional = {"grad_norm", "cosine_max", "l2_max", "epsilon", "psnr", "ssim", "label_acc"}
    return [c for c in columns if c[1] not in optional or any(r.get(c[1]) is not None for r in rows)]


def format_leakage(rows: list[dict[str, Any]]) -> str:
    """The leakage table as Markdown (the columns that have values)."""
    return to_markdown(rows, _shown(LEAKAGE_COLUMNS, rows))


def _table_html(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    head = "".join(f"<th>{_e(c[0])}</th>" for c in columns)
    num = ' class="num"'
    body = "".join("<tr>" + "".join(
        f"<td{'' if f == 's' else num}>{_e(format_value(r.get(n), f))}</td>" for _, n, f in columns)
        + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_audit_report(run_dir: str | Path, run: Optional[str] = None) -> dict[str, Path]:
    """Write the tables (Markdown, CSV) and ``audit-report.html``; returns their paths."""
    from safetensors.torch import load_file

    from ..metrics.image import psnr

    run_dir = Path(run_dir)
    if not (run_dir / STORE_NAME).is_file():
        raise ConfigError(f"'{run_dir}' has no results store ({STORE_NAME})")
    with AuditStore(run_dir) as store:
        run, _ = _rows(store, run)
        rows = leakage_table(store, run)
    rounds = round_table(rows)
    assets = run_dir / ASSETS_DIR
    (assets / "grids").mkdir(parents=True, exist_ok=True)
    cols = _shown(LEAKAGE_COLUMNS, rows)
    paths: dict[str, Path] = {}
    for name, table, columns in (("leakage", rows, cols), ("rounds", rounds, ROUND_COLUMNS)):
        (assets / f"{name}.md").write_text(to_markdown(table, columns))
        (assets / f"{name}.csv").write_text(to_csv(table, columns + ([("error", "error", "s")]
                                                                       if name == "leakage" else [])))
        paths[f"{name} md"], paths[f"{name} csv"] = assets / f"{name}.md", assets / f"{name}.csv"

    parts = ["<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
             f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
             f"<title>gradaudit audit: {_e(run)}</title><style>{_STYLE}</style><script>{_SCRIPT}</script></head><body>",
             f"<h1>gradaudit audit of a federated run: {_e(run)}</h1>",
             f'<p class="meta">Results store <code>{_e((run_dir / STORE_NAME).resolve())}</code>, generated '
             f'{_e(time.strftime("%Y-%m-%d %H:%M:%S"))}.</p>',
             "<h2>Leakage per round</h2>", _table_html(rounds, ROUND_COLUMNS),
             "<h2>Every audited client update</h2>",
             "<p>The attack saw only the captured update (weights sent, weights returned, K, lr, B); the private "
             "batch was used only to score it. Update norm: ||theta_0 - theta_K||. Proxies: mean over the "
             "client's samples at theta_0.</p>", _table_html(rows, cols)]
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        parts.append("<h2>Failed audits</h2><ul>" + "".join(
            f"<li>round {r['round']}, client {_e(r['client'])}: <code>{_e(r['error'])}</code></li>" for r in failed)
            + "</ul>")
    grids = []
    for i, r in enumerate(rows):
        if not r["images_path"] or not (run_dir / r["images_path"]).is_file():
            continue
        t = load_file(str(run_dir / r["images_path"]))
        truth, rec = t["truth"][:MAX_GRID_IMAGES].clamp(0, 1), t["reconstruction"][:MAX_GRID_IMAGES].clamp(0, 1)
        caps = [f"{float(v):.1f} dB" for v in psnr(rec, truth)]
        png = save_reconstruction_grid([("private", truth, None), ("attack", rec, caps)],
                                       assets / "grids" / f"audit_{i:03d}.png", scale=3)
        cap = f"round {r['round']}, client {r['client']}: {r['attack']}, PSNR {format_value(r['psnr'], '.2f')} dB"
        grids.append(f"<figure>{_img(png, cap)}<figcaption>{_e(cap)}</figcaption></figure>")
    parts.append("<h2>Reconstructions</h2>")
    parts.append('<div class="grids">' + "".join(grids) + "</div>" if grids else
                 '<p class="note">No reconstruction images (no attack, or no ground truth to compare with).</p>')
    parts.append("</body></html>\n")
    out = run_dir / REPORT_NAME
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    tmp.replace(out)
    paths["report"] = out
    return paths
