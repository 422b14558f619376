"""Every table gradaudit writes, in one place: Markdown for people, CSV for machines.

Rows are dicts or dataclasses; a column is ``(header, field, format)`` where ``format`` is a Python format spec
(``"s"`` for text). :func:`write_tables` writes the systematic evaluation's tables
(:mod:`gradaudit.evaluation.analysis` computes their rows); :func:`write_dict_csv` the raw per-row files of the
experiments (LAVP validation, two-layer bounds).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..evaluation.analysis import (POINT_COLUMNS, STRONGEST_COLUMNS, UTILITY_COLUMNS, privacy_utility_points,
                                   strongest_attack_table, utility_losses)
from ..evaluation.store import ResultsStore

Column = tuple[str, str, str]


def _get(row: Any, name: str) -> Any:
    return row.get(name) if isinstance(row, dict) else getattr(row, name)


def format_value(value: Any, fmt: str) -> str:
    """A cell of a human-readable table: '-' for missing, numbers with ``fmt``."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if fmt == "s" or isinstance(value, str):
        return str(value)
    try:
        return format(value, fmt)
    except (TypeError, ValueError):
        return str(value)


def drop_empty_setting(columns: list[Column], rows: Iterable[Any]) -> list[Column]:
    """Hide the setting column when every row shares one setting."""
    settings = {_get(r, "setting") for r in rows} if any(c[1] == "setting" for c in columns) else set()
    return [c for c in columns if not (c[1] == "setting" and len(settings) <= 1)]


def to_markdown(rows: list[Any], columns: list[Column]) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")
    header = "| " + " | ".join(c[0] for c in columns) + " |"
    align = "| " + " | ".join("---" if c[2] == "s" else "---:" for c in columns) + " |"
    lines = [header, align]
    for r in rows:
        lines.append("| " + " | ".join(esc(format_value(_get(r, c[1]), c[2])) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: list[Any], columns: list[Column]) -> str:
    """Machine-readable: field names as headers, full-precision numbers, empty for missing."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([c[1] for c in columns])
    for r in rows:
        vals = []
        for c in columns:
            v = _get(r, c[1])
            vals.append("" if v is None or (isinstance(v, float) and not math.isfinite(v)) else
                        (repr(v) if isinstance(v, float) else v))
        w.writerow(vals)
    return buf.getvalue()


def write_tables(store: ResultsStore, out_dir: str | Path, metric: str = "psnr") -> dict[str, Path]:
    """Write strongest_attack.{md,csv}, privacy_utility.{md,csv} and utility.{md,csv}; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = strongest_attack_table(store, metric)
    points = privacy_utility_points(store, metric, table=table)
    util = utility_losses(store)
    paths = {}
    for name, rows, cols, extra in (
            ("strongest_attack", table, STRONGEST_COLUMNS, [("psnr attack", "psnr_attack", "s"),
                                                            ("rmse attack", "rmse_attack", "s"),
                                                            ("lpips attack", "lpips_attack", "s")]),
            ("privacy_utility", points, POINT_COLUMNS, [("strength value", "strength_value", "g"),
                                                        ("lpips", "lpips", "g"),
                                                        ("baseline loss", "baseline_train_loss", "g"),
                                                        ("baseline acc", "baseline_accuracy", "g"),
                                                        ("utility key", "utility_key", "s")]),
            ("utility", util, UTILITY_COLUMNS, [("key", "key", "s")])):
        md_cols = drop_empty_setting(cols, rows)
        (out / f"{name}.md").write_text(to_markdown(rows, md_cols), encoding="utf-8")
        (out / f"{name}.csv").write_text(to_csv(rows, cols + extra), encoding="utf-8")
        paths[f"{name}_md"], paths[f"{name}_csv"] = out / f"{name}.md", out / f"{name}.csv"
    return paths


def write_dict_csv(path: str | Path, rows: Sequence[dict], columns: Sequence[str] | None = None) -> Path:
    """``rows`` as CSV with every key any row has (first-seen order) unless ``columns`` names them."""
    path = Path(path)
    if columns is None:
        columns = []
        for r in rows:
            columns += [k for k in r if k not in columns]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns))
        w.writeheader()
        w.writerows(rows)
    return path
