"""The LAVP validation's files and tables (the experiment itself is :mod:`gradaudit.evaluation.lavp_validation`).

:func:`write_validation` writes validation.csv (one row per sample), correlations.csv, validation.md (the tables
below) and validation.json (settings, timings); :func:`validation_markdown` renders the tables: proxy rows,
metric x attack-loss columns, Spearman rho [bootstrap 95 % CI], bold where the interval excludes 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..evaluation.lavp_validation import BASELINE, METRICS, ValidationResult
from ..proxies.lavp import PROXY_COLUMNS
from .tables import write_dict_csv


def write_validation(result: ValidationResult, out: str | Path, title: str | None = None) -> dict[str, Path]:
    """validation.csv (per sample), correlations.csv, validation.md (tables), validation.json (meta)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"validation": write_dict_csv(out / "validation.csv", result.rows),
             "correlations": write_dict_csv(out / "correlations.csv", result.correlations),
             "tables": out / "validation.md", "meta": out / "validation.json"}
    files["tables"].write_text(validation_markdown(result, title))
    files["meta"].write_text(json.dumps(result.meta, indent=2, default=str))
    return files


_NAMES = {"mse": "MSE", "psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS", "l2": "L2", "cosine": "cos"}


def _cell(c: dict | None, key: str = "rho", lo: str = "ci_low", hi: str = "ci_high") -> str:
    if c is None or not np.isfinite(c.get(key, np.nan)):
        return "n/a"
    s = f"{c[key]:+.2f} [{c[lo]:+.2f}, {c[hi]:+.2f}]"
    if np.isfinite(c[lo]) and (c[lo] > 0 or c[hi] < 0):
        s = f"**{s}**"
    return s


def _proxy_table(by: dict, study: str, cols: list[tuple[str, str]], headers: list[str], proxies: list[str],
                 delta: bool = False) -> list[str]:
    """Markdown rows: one per proxy, one column per (attack, metric-or-step) of ``study``; rho [CI], or with
    ``delta`` the difference to the gradient norm [paired CI] (the baseline's own row left out)."""
    lines = ["| proxy | " + " | ".join(headers) + " |", "|---|" + "---|" * len(cols)]
    keys = ("delta", "delta_ci_low", "delta_ci_high") if delta else ()
    for p in proxies:
        if delta and p == BASELINE:
            continue
        lines.append(f"| {p} | " + " | ".join(_cell(by.get((study, a, x, p)), *keys) for a, x in cols) + " |")
    return lines


def validation_markdown(result: ValidationResult, title: str | None = None) -> str:
    """The tables: proxy rows, metric x attack-loss columns, rho [95 % CI] (bold: the CI excludes 0)."""
    meta = result.meta
    lines = []
    if title:
        lines += [f"### {title}", ""]
    m = meta["model"]
    lines.append(f"{meta['dataset']} / {m['name']}{' ' + json.dumps(m.get('kwargs')) if m.get('kwargs') else ''}, "
                 f"n = {meta['n']} samples, seed {meta['seed']}, labels "
                 f"{'known' if meta['labels_known'] else 'iDLG-recovered'}; proxies by {meta['proxies']['method']}. "
                 "Spearman rho [bootstrap 95 % CI]; rho > 0: a larger proxy went with a better reconstruction "
                 "(MSE and LPIPS negated). Bold: CI excludes 0.")
    lines.append("")
    by = {(c["study"], c["attack"], c["metric"], c["proxy"]): c for c in result.correlations}
    attacks = list(meta["attacks"])
    metrics = [x for x in METRICS if any(k[0] == "attack" and k[2] == x for k in by)]
    proxies = [p for p in PROXY_COLUMNS if any(k[3] == p for k in by)]
    cols = [(a, x) for a in attacks for x in metrics]
    headers = [f"{_NAMES[x]} ({_NAMES[a]})" for a, x in cols]
    lines += _proxy_table(by, "attack", cols, headers, proxies)
    if "lpips" not in metrics:
        lines.append("")
        lines.append(f"LPIPS: {meta['lpips']}.")
    # delta to grad norm
    lines += ["", "Difference to the gradient norm, rho(proxy) - rho(grad_norm) [paired bootstrap 95 % CI]:", ""]
    lines += _proxy_table(by, "attack", cols, headers, proxies, delta=True)
    # attack quality summary
    lines += ["", "Attack quality (median [min, max] over the samples):", ""]
    lines.append("| attack | config | PSNR (dB) | SSIM | seconds/sample |")
    lines.append("|---|---|---|---|---|")
    for a, cfg in meta["attacks"].items():
        ps, ss, sec = result.column(f"{a}_psnr"), result.column(f"{a}_ssim"), result.column(f"{a}_seconds")
        desc = f"{cfg['preset']}, {cfg['optimizer']}{' (signed)' if cfg.get('signed') else ''}, {cfg['iterations']} it"
        lines.append(f"| {_NAMES[a]} | {desc} | {np.median(ps):.1f} [{ps.min():.1f}, {ps.max():.1f}] | "
                     f"{np.median(ss):.3f} [{ss.min():.3f}, {ss.max():.3f}] | {np.mean(sec):.1f} |")
    # local analysis
    loc = [k for k in by if k[0] == "local"]
    if loc:
        lm = meta["local"]
        lcols = sorted({(k[1], k[2]) for k in loc}, key=lambda t: (attacks.index(t[0]) if t[0] in attacks else 9, t[1]))
        lrows = []
        for k in loc:
            if k[3] not in lrows:
                lrows.append(k[3])
        lines += ["", f"Worst-case local analysis: gradient descent from x* + {lm['eps']} z (normalised space), "
                      f"{lm['steps']} steps; quality = -(remaining error ||x_T - x*||^2 / ||x_0 - x*||^2); "
                      "step 1 / max_i lambda_max (common) or 1 / own lambda_max (own):", ""]
        lheaders = [f"{_NAMES[a]}, {r.replace('err_', '')} step" for a, r in lcols]
        lines += _proxy_table(by, "local", lcols, lheaders, lrows)
        lines += ["", "Local analysis, difference to the gradient norm, rho(proxy) - rho(grad_norm) [paired bootstrap "
                      "95 % CI]:", ""]
        lines += _proxy_table(by, "local", lcols, lheaders, lrows, delta=True)
        med = []
        for a, r in lcols:
            e = result.column(f"local_{a}_{r.replace('err_', '')}_err")
            med.append(f"{_NAMES[a]}/{r.replace('err_', '')}: {np.median(e):.3g} [{np.min(e):.3g}, {np.max(e):.3g}]")
        lines += ["", "Remaining error (median [min, max]): " + "; ".join(med) + "."]
    sec = meta["seconds"]
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in sec.items() if k != "total")
    lines += ["", f"Time: {sec['total']:.0f} s ({parts}), "
                  f"{meta['torch_threads']} torch thread(s)."]
    return "\n".join(lines) + "\n"
