"""The validation layer: checks every command and API entry point runs before any work or any file is created.

Each check raises :class:`~gradaudit.errors.ConfigError` (or another :class:`~gradaudit.errors.GradauditError`)
with one line that names the option and what was wrong, and never creates, truncates or modifies anything:

* output places (:func:`check_output_dir`, :func:`check_run_dir`): an existing file where a folder is wanted,
  a folder that cannot be created or written, a run folder whose ``results.sqlite`` is not a gradaudit results
  store;
* input places (:func:`check_input_file`, :func:`check_existing_run_dir`);
* numbers (:func:`check_int`, :func:`check_number`): integers that must be positive, and finite numbers
  (``inf`` and ``nan`` are refused everywhere a number is read).

Malformed *files* (observations, checkpoints, images, pickled batches, YAML) are refused by their own readers
with the same one-line errors; the CLI folds any multi-line library message into its one line.
"""

from __future__ import annotations

import math
import os
import sqlite3
from pathlib import Path
from typing import Any

from .errors import ConfigError

#: the tables a gradaudit results store holds (see :mod:`gradaudit.evaluation.store`)
STORE_TABLES = frozenset({"cells", "utility", "audit"})
STORE_NAME = "results.sqlite"


def check_int(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum`` (bools and non-integral numbers are refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_number(value: Any, name: str, *, minimum: float | None = None, positive: bool = False,
                 maximum: float | None = None) -> float:
    """``value`` as a finite float, optionally > 0 (``positive``) and within [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value}")
    if positive and not value > 0:
        raise ConfigError(f"{name} must be > 0, got {value}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be <= {maximum}, got {value}")
    return float(value)


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_output_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """A folder that exists and is writable, or that can be created (its nearest existing parent is a
    writable folder). Nothing is created here."""
    p = Path(path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ConfigError(f"{what} '{p}' exists and is not a folder")
        if not os.access(p, os.W_OK | os.X_OK):
            raise ConfigError(f"{what} '{p}' is not writable")
        return p
    parent = _nearest_existing(p.parent)
    if not parent.is_dir():
        raise ConfigError(f"{what} '{p}' cannot be created: '{parent}' is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} '{p}' cannot be created: '{parent}' is not writable")
    return p


def check_output_files(folder: Path, names: list[str], what: str = "--out") -> None:
    """Each of ``folder/name`` is absent or a writable regular file (not a folder)."""
    for name in names:
        f = folder / name
        if f.exists() and (not f.is_file() or not os.access(f, os.W_OK)):
            raise ConfigError(f"{what}: '{f}' exists and cannot be overwritten (a folder or read-only)")


def check_store_file(path: Path) -> None:
    """``path`` (an existing ``results.sqlite``) is a SQLite database holding no tables but gradaudit's."""
    if not path.is_file():
        raise ConfigError(f"'{path}' is not a file; a run folder's {STORE_NAME} must be a results store")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        raise ConfigError(f"'{path}' is not a gradaudit results store ({e})") from None
    foreign = {t for t in tables - STORE_TABLES if not t.startswith("sqlite_")}
    if foreign:
        raise ConfigError(f"'{path}' is not a gradaudit results store (it holds table '{sorted(foreign)[0]}')")


def check_run_dir(path: str | os.PathLike, what: str = "--out", create: bool = False) -> Path:
    """A run folder to write results into: :func:`check_output_dir`, plus an existing ``results.sqlite`` must
    be a gradaudit results store. With ``create`` the folder is created after the checks passed."""
    p = check_output_dir(path, what)
    store = p / STORE_NAME
    if store.exists():
        check_store_file(store)
    if create:
        p.mkdir(parents=True, exist_ok=True)
    return p


def check_existing_run_dir(path: str | os.PathLike, what: str = "run folder") -> Path:
    """A run folder to read: it exists and holds a valid ``results.sqlite``."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ConfigError(f"{what} '{p}' does not exist or is not a folder")
    store = p / STORE_NAME
    if not store.exists():
        raise ConfigError(f"{what} '{p}' holds no {STORE_NAME} (run 'gradaudit evaluate' or 'utility' into it)")
    check_store_file(store)
    return p


def check_input_file(path: str | os.PathLike, what: str) -> Path:
    """An existing, readable regular file."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"{what} not found: {p}")
    if not p.is_file():
        raise ConfigError(f"{what} '{p}' is not a file")
    if not os.access(p, os.R_OK):
        raise ConfigError(f"{what} '{p}' is not readable")
    return p


def finite_or_none(v: Any) -> Any:
    """``v`` as a float when it is a finite number, None when it is not (NaN, inf, None, text); lists are mapped
    element by element. For results stores and JSON, where a non-finite number becomes NULL."""
    if isinstance(v, (list, tuple)):
        return [finite_or_none(u) for u in v]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        try:
            v = float(v)  # numpy and torch scalars
        except (TypeError, ValueError):
            return None
    return float(v) if math.isfinite(v) else None


def one_line(message: str) -> str:
    """A (possibly multi-line) message folded into one line: lines joined with ' | ', spaces collapsed."""
    parts = [" ".join(line.split()) for line in str(message).splitlines()]
    return " | ".join(p for p in parts if p)


__all__ = ["finite_or_none", "check_existing_run_dir", "check_input_file", "check_int", "check_number", "check_output_dir",
           "check_output_files", "check_run_dir", "check_store_file", "one_line"]
