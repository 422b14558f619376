"""The opt-in download helpers, exercised without a network."""

from __future__ import annotations

import io
import tarfile

import pytest

from gradaudit.data import CorruptDataError
from gradaudit.data._download import extract_tar, fetch, md5_of


def _tar(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def test_extract_keeps_plain_files(tmp_path):
    link = tarfile.TarInfo("pkg/link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    archive = _tar(tmp_path / "a.tar.gz", [_file("pkg/data_batch_1", b"abc"), (link, None)])
    extract_tar(archive, tmp_path / "out")
    assert (tmp_path / "out" / "pkg" / "data_batch_1").read_bytes() == b"abc"
    assert not (tmp_path / "out" / "pkg" / "link").exists() and not (tmp_path / "out" / "pkg" / "link").is_symlink()


@pytest.mark.parametrize("name", ["../escape", "/abs/escape", "pkg/../../escape"])
def test_extract_refuses_paths_outside_the_target(tmp_path, name):
    archive = _tar(tmp_path / "a.tar.gz", [_file(name)])
    with pytest.raises(CorruptDataError, match="outside"):
        extract_tar(archive, tmp_path / "out")
    assert not (tmp_path / "escape").exists()


def test_fetch_refuses_non_http_and_checks_md5(tmp_path):
    with pytest.raises(ValueError, match="non-HTTP"):
        fetch("file:///etc/passwd", tmp_path / "x")
    (tmp_path / "f").write_bytes(b"hello")
    assert md5_of(tmp_path / "f") == "5d41402abc4b2a76b9719d911017c592"
