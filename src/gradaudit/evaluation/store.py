"""The results store of a sweep: one SQLite file (``results.sqlite``) in the run folder.

One row per finished cell, written in a single transaction after the cell's image file is already on disk
(written to a temporary name, then renamed), so a process killed at any moment (SIGKILL included) leaves
either a complete row or none: no half-written row, no duplicate (the cell key is the primary key), and a
rerun finishes only the missing cells. WAL journaling keeps readers (the report) off the writer's back.

Only the parent process writes; workers return their results to it.

Tables:
  cells(key PK, status 'done'|'failed', attack, defense, batch_size, sample, seed, psnr, ssim, mse, lpips,
        label_acc, seconds, attempts, error, images_path, config_json, metrics_json, finished_at,
        defense_family, defense_strength)
        (defense_family: the defenses' spec names joined by ' + ', 'none' without one; defense_strength: the
        declared strength of a single defense, NULL for a chain; both added to older stores when opened)
  utility(key PK, defense, dataset, model, final_train_loss, test_accuracy, seconds, config_json, finished_at)
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from ..checks import STORE_NAME, check_store_file
from ..errors import ConfigError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    key TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    attack TEXT NOT NULL,
    defense TEXT NOT NULL,
    batch_size INTEGER NOT NULL,
    sample INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    psnr REAL, ssim REAL, mse REAL, lpips REAL, label_acc REAL,
    seconds REAL,
    attempts INTEGER NOT NULL DEFAULT 1,
    error TEXT,
    images_path TEXT,
    config_json TEXT NOT NULL,
    metrics_json TEXT,
    finished_at TEXT NOT NULL,
    defense_family TEXT,
    defense_strength REAL
);
CREATE TABLE IF NOT EXISTS utility (
    key TEXT PRIMARY KEY,
    defense TEXT NOT NULL,
    dataset TEXT NOT NULL,
    model TEXT NOT NULL,
    final_train_loss REAL,
    test_accuracy REAL,
    seconds REAL,
    config_json TEXT NOT NULL,
    finished_at TEXT NOT NULL
);
"""


@dataclass
class CellRow:
    """One finished (or definitively failed) cell of a sweep."""

    key: str
    status: str
    attack: str
    defense: str
    batch_size: int
    sample: int
    seed: int
    config: dict[str, Any]
    psnr: Optional[float] = None
    ssim: Optional[float] = None
    mse: Optional[float] = None
    lpips: Optional[float] = None
    label_acc: Optional[float] = None
    seconds: Optional[float] = None
    attempts: int = 1
    error: Optional[str] = None
    images_path: Optional[str] = None
    metrics: dict[str, Any] = field(default_factory=dict)
    defense_family: Optional[str] = None
    defense_strength: Optional[float] = None


@dataclass
class UtilityRow:
    key: str
    defense: str
    dataset: str
    model: str
    final_train_loss: Optional[float]
    test_accuracy: Optional[float]
    seconds: Optional[float]
    config: dict[str, Any]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


class ResultsStore:
    """SQLite-backed, transactional store of a sweep's results (see module docstring)."""

    def __init__(self, run_dir: str | Path, *, create: bool = True) -> None:
        """Open (``create``: or create) ``run_dir/results.sqlite``. A file there that is not a gradaudit store
        is refused (ConfigError) and left untouched; ``create=False`` refuses a missing store."""
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / STORE_NAME
        if self.path.exists():
            check_store_file(self.path)
        elif not create:
            raise ConfigError(f"'{self.run_dir}' holds no {STORE_NAME}")
        else:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(_SCHEMA)
            self._migrate()
        except sqlite3.DatabaseError as e:
            raise ConfigError(f"'{self.path}' cannot be used as a results store: {e}") from None

    def _migrate(self) -> None:
        """Add the columns a store written by an older version lacks (NULL for its rows)."""
        have = {r[1] for r in self._conn.execute("PRAGMA table_info(cells)")}
        for column, kind in (("defense_family", "TEXT"), ("defense_strength", "REAL")):
            if column not in have:
                self._conn.execute(f"ALTER TABLE cells ADD COLUMN {column} {kind}")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ cells
    def add_cell(self, row: CellRow) -> bool:
        """Insert a finished cell in one transaction; returns False (and writes nothing) if the key exists."""
        values = (row.key, row.status, row.attack, row.defense, row.batch_size, row.sample, row.seed,
                  row.psnr, row.ssim, row.mse, row.lpips, row.label_acc, row.seconds, row.attempts, row.error,
                  row.images_path, json.dumps(row.config, sort_keys=True), json.dumps(row.metrics), _now(),
                  row.defense_family, row.defense_strength)
        with self._transaction():
            cur = self._conn.execute(
                "INSERT OR IGNORE INTO cells (key, status, attack, defense, batch_size, sample, seed, psnr, ssim,"
                " mse, lpips, label_acc, seconds, attempts, error, images_path, config_json, metrics_json,"
                " finished_at, defense_family, defense_strength) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                values)
        return cur.rowcount == 1

    def finished_keys(self, include_failed: bool = True) -> set[str]:
        q = "SELECT key FROM cells" + ("" if include_failed else " WHERE status = 'done'")
        return {k for (k,) in self._conn.execute(q)}

    def cells(self, status: str | None = "done") -> Iterator[CellRow]:
        q = "SELECT * FROM cells" + (" WHERE status = ?" if status else "") + " ORDER BY rowid"
        cur = self._conn.execute(q, (status,) if status else ())
        names = [d[0] for d in cur.description]
        for values in cur:
            r = dict(zip(names, values))
            yield CellRow(key=r["key"], status=r["status"], attack=r["attack"], defense=r["defense"],
                          batch_size=r["batch_size"], sample=r["sample"], seed=r["seed"],
                          config=json.loads(r["config_json"]), psnr=r["psnr"], ssim=r["ssim"], mse=r["mse"],
                          lpips=r["lpips"], label_acc=r["label_acc"], seconds=r["seconds"],
                          attempts=r["attempts"], error=r["error"], images_path=r["images_path"],
                          metrics=json.loads(r["metrics_json"]) if r["metrics_json"] else {},
                          defense_family=r.get("defense_family"), defense_strength=r.get("defense_strength"))

    def forget_failed(self, keys: set[str] | None = None) -> int:
        """Delete ``failed`` rows (all, or those in ``keys``) in one transaction, so a rerun retries them.

        Returns how many rows were deleted. ``done`` rows are never touched.
        """
        with self._transaction():
            if keys is None:
                cur = self._conn.execute("DELETE FROM cells WHERE status = 'failed'")
                return cur.rowcount
            n = 0
            for key in sorted(keys):
                n += self._conn.execute("DELETE FROM cells WHERE status = 'failed' AND key = ?", (key,)).rowcount
            return n

    def count(self, status: str | None = None) -> int:
        q = "SELECT COUNT(*) FROM cells" + (" WHERE status = ?" if status else "")
        return int(self._conn.execute(q, (status,) if status else ()).fetchone()[0])

    # ---------------------------------------------------------------- utility
    def add_utility(self, row: UtilityRow) -> bool:
        with self._transaction():
            cur = self._conn.execute(
                "INSERT OR IGNORE INTO utility (key, defense, dataset, model, final_train_loss, test_accuracy,"
                " seconds, config_json, finished_at) VALUES (?,?,?,?,?,?,?,?,?)",
                (row.key, row.defense, row.dataset, row.model, row.final_train_loss, row.test_accuracy,
                 row.seconds, json.dumps(row.config, sort_keys=True), _now()))
        return cur.rowcount == 1

    def utility(self) -> list[UtilityRow]:
        cur = self._conn.execute("SELECT key, defense, dataset, model, final_train_loss, test_accuracy, seconds,"
                                 " config_json FROM utility ORDER BY rowid")
        return [UtilityRow(k, d, ds, m, l, a, s, json.loads(c)) for k, d, ds, m, l, a, s, c in cur]

    # ------------------------------------------------------------------ util
    def _transaction(self):
        conn = self._conn

        class _Tx:
            def __enter__(self_inner):
                conn.execute("BEGIN IMMEDIATE")

            def __exit__(self_inner, exc_type, exc, tb):
                conn.execute("ROLLBACK" if exc_type else "COMMIT")
                return False

        return _Tx()
