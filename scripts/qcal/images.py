"""Finding images, naming their raw tensors, splitting them stably, and knowing when one's content
changed. Imported by the Snakefile at parse time, so it stays free of heavy imports."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from qcal.files import write_text

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # compared case-insensitively: .JPG and .Jpeg count too

# SNPE's input list splits lines on whitespace and reads "name:=path"; Snakemake reads braces in file
# names as wildcards. These characters are percent-encoded in raw file names (and '%' itself, so the
# mapping can be reversed).
_UNSAFE = re.compile(r"[\s%:{}]")
# A file name component may have 255 bytes; the longest name made from a stem is "<stem>.json".
MAX_STEM_BYTES = 255 - len(".json")
_HASHED_STEM_KEEP = 180  # bytes of an over-long name kept in front of its hash


@dataclass(frozen=True)
class Unusable:
    """A file under the image folder that cannot be an image input, and why."""

    path: str      # relative to the folder, as found (non-UTF-8 bytes shown escaped)
    reason: str


@dataclass(frozen=True)
class Scan:
    images: list[str]          # usable image paths, relative, '/'-separated, sorted
    unusable: list[Unusable]   # image-named entries that are not readable regular files


def scan_images(root: str | os.PathLike) -> Scan:
    """Image files under root (symbolic links to files and folders followed, each real folder once),
    relative to it, '/'-separated and sorted so the order is the same on every machine. Hidden files
    and folders (.DS_Store, .git) are ignored. Entries with an image suffix that are not regular files
    (a FIFO would block its reader forever), cannot be read, or whose names are not UTF-8 are returned
    as unusable instead."""
    images, unusable = [], []
    seen_folders: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen_folders:  # a link loop, or two links to one folder
            dirs[:] = []
            continue
        seen_folders.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel_folder = os.path.relpath(folder, root)
        for name in files:
            if name.startswith(".") or not name.lower().endswith(IMAGE_SUFFIXES):
                continue
            rel = (name if rel_folder == "." else f"{rel_folder}/{name}").replace(os.sep, "/")
            problem = _unusable_reason(os.path.join(folder, name), rel)
            if problem:
                unusable.append(Unusable(rel.encode("utf-8", "backslashreplace").decode("utf-8"), problem))
            else:
                images.append(rel)
    return Scan(sorted(images), sorted(unusable, key=lambda u: u.path))


def _unusable_reason(path: str, rel: str) -> str:
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not valid UTF-8 (SNPE input lists and reports are UTF-8): rename it"
    try:
        info = os.stat(path)
    except OSError as err:
        return f"cannot be read: {err.strerror} (a broken link?)"
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file (a FIFO, device or socket would block or fail): remove it"
    if not os.access(path, os.R_OK):
        return "cannot be read: permission denied"
    return ""


def raw_stem(image_rel: str) -> str:
    """The raw file's name (without .raw) for an image path: the path itself, with the few characters
    that would break an SNPE input list or a Snakemake file pattern percent-encoded. A component too
    long for the file system keeps its first bytes and gets a hash of the whole in place of the rest."""
    parts = [_UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), part)
             for part in image_rel.split("/")]
    return "/".join(_fit(part) for part in parts)


def _fit(part: str) -> str:
    data = part.encode("utf-8")
    if len(data) <= MAX_STEM_BYTES:
        return part
    digest = hashlib.sha256(data).hexdigest()[:16]
    head = data[:_HASHED_STEM_KEEP].decode("utf-8", "ignore")
    return f"{head}~{digest}"


def unit_hash(image_id: str, salt: str) -> float:
    """A stable number in [0, 1) for an image and a purpose (the salt)."""
    digest = hashlib.sha256(f"{salt}:{image_id}".encode("utf-8")).hexdigest()
    return int(digest[:12], 16) / 16**12


def shard_of(image_id: str, shards: int) -> int:
    """A stable shard for an image (by its relative path): adding or editing one image touches one
    calibration shard only."""
    return int(unit_hash(image_id, "shard") * shards)


def is_held_out(image_id: str, fraction: float, salt: str = "holdout") -> bool:
    """Stable split: an image stays on its side whatever else is added or removed (another salt gives
    another, independent split)."""
    return unit_hash(image_id, salt) < fraction


def search_sample(image_ids: list[str], count: int) -> list[str]:
    """A stable sample of `count` calibration images for the accuracy search: adding or removing one image
    changes at most one member."""
    return sorted(sorted(image_ids, key=lambda i: unit_hash(i, "search"))[:count])


# --------------------------------------------------------------------------------------------------
# Content digests: a raw is rebuilt when its image's bytes change, whatever the file's modification
# time says (`cp -p`, `rsync -a`, `tar x` and `touch -r` give changed files old times). Hashing every
# image on every run would read the whole folder, so each digest is cached with the file's stat
# signature and recomputed only when that changes; any write changes the signature (the ctime cannot
# be set back), so a cached digest is never stale.

_DIGEST_COLUMNS = ["image", "size", "mtime_ns", "ctime_ns", "inode", "sha256"]


def _signature(info: os.stat_result) -> tuple[str, str, str, str]:
    return str(info.st_size), str(info.st_mtime_ns), str(info.st_ctime_ns), str(info.st_ino)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_digests(root: str | os.PathLike, images: list[str], cache: str | os.PathLike) -> dict[str, str]:
    """SHA-256 of each image's bytes, from the cache file where the file's stat signature is unchanged.
    The cache is rewritten (atomically) only when something changed."""
    cached: dict[str, tuple[tuple[str, ...], str]] = {}
    cache = Path(cache)
    if cache.is_file():
        with open(cache, encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                cached[row["image"]] = ((row["size"], row["mtime_ns"], row["ctime_ns"], row["inode"]), row["sha256"])
    digests, rows, changed = {}, [], set(cached) - set(images)
    for image in images:
        path = os.path.join(root, image)
        signature = _signature(os.stat(path))
        entry = cached.get(image)
        if entry and entry[0] == signature:
            digest = entry[1]
        else:
            digest = file_sha256(path)
            changed.add(image)
        digests[image] = digest
        rows.append([image, *signature, digest])
    if changed or not cache.is_file():
        out = io.StringIO()
        writer = csv.writer(out, delimiter="\t", lineterminator="\n")
        writer.writerow(_DIGEST_COLUMNS)
        writer.writerows(rows)
        write_text(cache, out.getvalue())
    return digests
