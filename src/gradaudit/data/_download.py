"""Opt-in downloads (``download=True``): fetch a URL to a file, check its MD5, unpack a tar archive safely.

Nothing here runs unless the user asks for a download; the tests never reach the network.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath

from gradaudit.data.base import CorruptDataError
from gradaudit.errors import DataNotFoundError


def md5_of(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(url: str, dest: Path, md5: str | None = None, timeout: float = 60.0) -> Path:
    """Download ``url`` (http/https only) to ``dest`` atomically; verify ``md5`` when given."""
    if not url.startswith(("https://", "http://")):
        raise ValueError(f"refusing to download non-HTTP URL {url}")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:  # noqa: S310
            shutil.copyfileobj(response, out, 1 << 20)
    except (urllib.error.URLError, OSError) as exc:
        part.unlink(missing_ok=True)
        raise DataNotFoundError(f"could not download {url} to {dest}: {exc}") from exc
    if md5 is not None and (got := md5_of(part)) != md5:
        part.unlink(missing_ok=True)
        raise CorruptDataError(f"download of {url} has MD5 {got}, expected {md5}; try again")
    os.replace(part, dest)
    return dest


def _check_member(member: tarfile.TarInfo) -> bool:
    """True for a plain file or folder with a relative path that stays inside the target; False for links,
    devices and the like (skipped); raise on a path that would escape the target folder."""
    parts = PurePosixPath(member.name).parts
    if member.name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        raise CorruptDataError(f"archive member {member.name!r} would be written outside the target folder")
    return member.isfile() or member.isdir()


def extract_tar(archive: Path, dest: Path) -> None:
    """Unpack ``archive`` into ``dest``, keeping only plain files and folders with safe relative paths."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = [m for m in tar.getmembers() if _check_member(m)]
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # pragma: no cover - Python without PEP 706 filters
                tar.extractall(dest, members=members)  # noqa: S202 - members checked above
    except tarfile.TarError as exc:
        raise CorruptDataError(f"cannot unpack {archive}: {exc}") from exc
