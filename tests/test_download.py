"""Offline tests for download_ptb and scripts/download_ptb.py, using a fake simple-examples archive.

Nothing here touches the internet: archives are served via file:// or an http.server bound to 127.0.0.1.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import subprocess
import sys
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from enas_rnn.corpus import DataError, download_ptb, load_corpus

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "download_ptb.py"

FAKE = {
    "train": b" the cat sat\n the dog ran\n",
    "valid": b" the cat ran\n",
    "test": b"\n the dog sat\n",
}
FAKE_SHA256 = {split: hashlib.sha256(text).hexdigest() for split, text in FAKE.items()}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def fake_tgz(tmp_path: Path) -> Path:
    """A small simple-examples.tgz laid out like Mikolov's, plus a decoy char-level file."""
    path = tmp_path / "srv" / "simple-examples.tgz"
    path.parent.mkdir()
    with tarfile.open(path, "w:gz") as tar:
        members = {f"./simple-examples/data/ptb.{s}.txt": FAKE[s] for s in FAKE}
        members["./simple-examples/data/ptb.char.train.txt"] = b"t h e\n"
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture()
def http_url(fake_tgz: Path) -> Iterator[str]:
    """Serves fake_tgz's folder on 127.0.0.1 (ephemeral port) from a background thread."""
    handler = functools.partial(_QuietHandler, directory=str(fake_tgz.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{fake_tgz.name}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature from the base class
        pass


def _assert_written(dest: Path) -> None:
    for split, text in FAKE.items():
        assert (dest / f"{split}.txt").read_bytes() == text
    # Only the three files, no temp leftovers.
    assert sorted(p.name for p in dest.iterdir()) == ["test.txt", "train.txt", "valid.txt"]


def test_download_file_url(fake_tgz: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "ptb"
    got = download_ptb(dest, url=fake_tgz.as_uri(), sha256=_sha256(fake_tgz), md5=None, file_sha256=FAKE_SHA256)
    assert got == dest
    _assert_written(dest)
    corpus = load_corpus(dest)  # the result is directly loadable
    assert corpus.train.numel() == 8 and len(corpus.vocab) == 6


def test_download_http(fake_tgz: Path, http_url: str, tmp_path: Path) -> None:
    dest = tmp_path / "ptb"
    md5 = hashlib.md5(fake_tgz.read_bytes()).hexdigest()
    download_ptb(dest, url=http_url, sha256=_sha256(fake_tgz), md5=md5, file_sha256=None)
    _assert_written(dest)


def test_download_overwrites_existing(fake_tgz: Path, tmp_path: Path) -> None:
    dest = tmp_path / "ptb"
    dest.mkdir()
    (dest / "train.txt").write_text("stale\n")
    download_ptb(dest, url=fake_tgz.as_uri(), sha256=None, md5=None, file_sha256=None)
    _assert_written(dest)


def test_load_corpus_download_true_uses_download_ptb(
    fake_tgz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import enas_rnn.corpus as corpus_mod

    calls: list[Path] = []

    def fake_download(dest: Path) -> Path:
        calls.append(dest)
        return download_ptb(dest, url=fake_tgz.as_uri(), sha256=None, md5=None, file_sha256=None)

    monkeypatch.setattr(corpus_mod, "download_ptb", fake_download)
    corpus = load_corpus(tmp_path / "ptb", download=True)
    assert calls == [tmp_path / "ptb"] and corpus.valid.numel() == 4
    load_corpus(tmp_path / "ptb", download=True)  # files present now: no second download
    assert len(calls) == 1


@pytest.mark.parametrize("which", ["sha256", "md5", "file"])
def test_bad_checksum_writes_nothing(fake_tgz: Path, tmp_path: Path, which: str) -> None:
    dest = tmp_path / "ptb"
    kwargs: dict = {"sha256": None, "md5": None, "file_sha256": None}
    if which == "sha256":
        kwargs["sha256"] = "0" * 64
    elif which == "md5":
        kwargs["md5"] = "0" * 32
    else:
        kwargs["file_sha256"] = {**FAKE_SHA256, "valid": "f" * 64}
    with pytest.raises(DataError) as info:
        download_ptb(dest, url=fake_tgz.as_uri(), **kwargs)
    msg = str(info.value)
    assert "mismatch" in msg and "expected" in msg and "got" in msg
    if which == "sha256":
        assert "0" * 64 in msg and _sha256(fake_tgz) in msg
    if which == "file":
        assert "ptb.valid.txt" in msg and FAKE_SHA256["valid"] in msg
    assert not dest.exists()


def test_default_file_hashes_reject_fake_content(fake_tgz: Path, tmp_path: Path) -> None:
    # With the real PTB hashes (the default), a wrong archive is caught even without an archive checksum.
    with pytest.raises(DataError, match="ptb.train.txt"):
        download_ptb(tmp_path / "ptb", url=fake_tgz.as_uri(), sha256=None, md5=None)
    assert not (tmp_path / "ptb").exists()


def test_zip_mirror(tmp_path: Path) -> None:
    archive = tmp_path / "ptb.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for split, text in FAKE.items():
            zf.writestr(f"ptb/ptb.{split}.txt", text)
            zf.writestr(f"__MACOSX/ptb/._ptb.{split}.txt", b"junk")
    dest = tmp_path / "ptb"
    download_ptb(dest, url=archive.as_uri(), sha256=None, md5=None, file_sha256=FAKE_SHA256)
    _assert_written(dest)


def test_archive_without_ptb_files(tmp_path: Path) -> None:
    archive = tmp_path / "other.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("readme.txt")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(DataError, match="lacks ptb.train.txt"):
        download_ptb(tmp_path / "ptb", url=archive.as_uri(), sha256=None, md5=None, file_sha256=None)


def test_unreachable_url_is_a_data_error(tmp_path: Path) -> None:
    url = (tmp_path / "absent.tgz").as_uri()
    with pytest.raises(DataError) as info:
        download_ptb(tmp_path / "ptb", url=url, file_sha256=None)
    assert url in str(info.value) and "by hand" in str(info.value)


def _run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=REPO_ROOT
    )


@pytest.mark.slow
def test_script_bad_checksum(fake_tgz: Path, tmp_path: Path) -> None:
    dest = tmp_path / "ptb"
    proc = _run_script("--out", str(dest), "--url", fake_tgz.as_uri(), "--sha256", "0" * 64)
    assert proc.returncode == 1
    assert "sha256 mismatch" in proc.stderr and "0" * 64 in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not dest.exists()


@pytest.mark.slow
def test_script_success_one_line(fake_tgz: Path, tmp_path: Path) -> None:
    dest = tmp_path / "ptb"
    proc = _run_script("--out", str(dest), "--url", fake_tgz.as_uri(), "--no-verify")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 1 and str(dest) in proc.stdout
    _assert_written(dest)
