"""Where on-disk datasets are looked for, and the error raised when they are not there.

Search order for a dataset stored in folder ``<sub>`` (e.g. ``fashion-mnist``, ``cifar-10-batches-py``):

1. the ``root`` the caller passed, itself and ``root/<sub>``;
2. ``$GRADAUDIT_DATA/<sub>`` when the ``GRADAUDIT_DATA`` environment variable is set;
3. ``<user cache>/gradaudit/<sub>``, the user cache being ``$XDG_CACHE_HOME`` or ``~/.cache``;
4. any dataset-specific system folder (e.g. a Debian package's), unless ``GRADAUDIT_SYSTEM_DATA=off``.

``GRADAUDIT_SYSTEM_DATA=off`` (also ``0``, ``no``, ``false``) hides the system folders: CI sets it, so a test that
only passes because a dataset package was installed by hand on the machine fails there instead of on a user's.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from gradaudit.errors import DataNotFoundError

ENV_VAR = "GRADAUDIT_DATA"
SYSTEM_ENV_VAR = "GRADAUDIT_SYSTEM_DATA"


def system_data_enabled() -> bool:
    """False when ``$GRADAUDIT_SYSTEM_DATA`` switches the system data folders off."""
    return os.environ.get(SYSTEM_ENV_VAR, "on").strip().lower() not in ("off", "0", "no", "false")


def cache_dir() -> Path:
    """gradaudit's per-user data/cache folder: ``$XDG_CACHE_HOME/gradaudit`` or ``~/.cache/gradaudit``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gradaudit"


def candidate_dirs(sub: str, root: str | os.PathLike | None, extra: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """Folders to search for dataset folder ``sub``, in order, without duplicates; ``extra`` are system folders
    (left out when :func:`system_data_enabled` is False)."""
    dirs: list[Path] = []
    if root is not None:
        root = Path(root).expanduser()
        dirs += [root, root / sub]
    env = os.environ.get(ENV_VAR)
    if env:
        dirs.append(Path(env).expanduser() / sub)
    dirs.append(cache_dir() / sub)
    if system_data_enabled():
        dirs += [Path(p) for p in extra]
    seen: set[Path] = set()
    return [d for d in dirs if not (d in seen or seen.add(d))]


def download_dir(sub: str, root: str | os.PathLike | None) -> Path:
    """Where ``download=True`` puts a dataset: ``root`` when given, else the user cache."""
    return Path(root).expanduser() if root is not None else cache_dir() / sub


def not_found(dataset: str, wanted: str, looked: Iterable[Path], how: str) -> DataNotFoundError:
    """The error for a dataset whose files are in none of ``looked``; ``how`` says how to get them."""
    places = ", ".join(str(p) for p in looked)
    return DataNotFoundError(f"{dataset} not found: looked for {wanted} in: {places}. {how}")
