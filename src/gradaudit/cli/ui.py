"""The command line's shared output: one console, progress bars, number formatting, the file list."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Optional

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console(width=None if sys.stdout.isatty() else 110)


class _LazyProgress(Progress):
    """A Progress that draws nothing until its first task is added (so input refused before any work leaves
    only the one error line)."""

    def __enter__(self) -> "_LazyProgress":
        return self

    def __exit__(self, *exc) -> None:
        if self.live.is_started:
            self.stop()

    def add_task(self, *args, **kwargs):
        if not self.live.is_started:
            self.start()
        return super().add_task(*args, **kwargs)


def progress_bar() -> Progress:
    """An iteration bar: description, bar, done/total, current loss, elapsed, remaining (drawn from its first
    task on)."""
    return _LazyProgress(TextColumn("[bold]{task.description}"), BarColumn(),
                         TextColumn("{task.completed}/{task.total}"), TextColumn("loss {task.fields[loss]}"),
                         TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)


def stage_bar() -> Progress:
    """A plain bar per stage (description, bar, percentage, remaining), drawn from its first task on."""
    return _LazyProgress(console=console)


def run_starter(progress: Progress) -> Callable[[str], Callable[[int, int, float], None]]:
    """``on_start`` for the API's attack runs: each run gets its own bar, updated by (done, total, loss)."""
    def start(label: str) -> Callable[[int, int, float], None]:
        task = progress.add_task(label, total=1, loss="-")

        def update(done: int, total: int, loss: float) -> None:
            progress.update(task, completed=done, total=total, loss=f"{loss:.3g}")
        return update
    return start


def fmt(v: Any, digits: int = 2) -> str:
    """A number for a table cell: ``-`` for None, floats with ``digits`` decimals."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def print_files(paths: dict[str, Path]) -> None:
    console.print("[bold]Files:[/bold]")
    for key, p in paths.items():
        console.print(f"  {key:16s} {p}", markup=False, highlight=False)


def warn(message: Optional[str]) -> None:
    """A warning line on stderr (for example: a legacy file whose metadata is not verified)."""
    if message:
        print(f"warning: {message}", file=sys.stderr)


def summary_table(rows: list[dict], title: str) -> Table:
    """One row per condition: defense, attack, B, images, PSNR, SSIM, label accuracy, time, the runs whose
    attack under-fit the update and those that fit it and recovered nothing (:mod:`gradaudit.evaluation.fit`;
    neither is evidence of safety)."""
    table = Table(title=title)
    for col in ("defense", "attack", "B", "images", "PSNR (dB)", "SSIM", "label acc", "time (s)", "under-fit",
                "fit, nothing"):
        text = col in ("defense", "attack")
        table.add_column(col, justify="left" if text else "right", no_wrap=text,
                         min_width=max([len(str(r[col])) for r in rows] + [len(col)]) if text else None)
    for r in rows:
        table.add_row(r["defense"], r["attack"], str(r["B"]), str(r["images"]), fmt(r["psnr"]), fmt(r["ssim"], 3),
                      fmt(r["label_acc"]), fmt(r["seconds"], 1), f"{r.get('underfit', 0)}/{r['runs']}",
                      f"{r.get('recovered_nothing', 0)}/{r['runs']}")
    return table
