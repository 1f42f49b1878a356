"""Finding calibration images and naming their raw tensors. Imported by the Snakefile at parse time,
so it stays free of heavy imports."""

from __future__ import annotations

import hashlib
import os
import re
from urllib.parse import unquote

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # compared case-insensitively: .JPG and .Jpeg count too

# SNPE's input list splits lines on whitespace and reads "name:=path", so these characters are
# percent-encoded in raw file names (and '%' itself, so the mapping can be reversed).
_UNSAFE_IN_LIST = re.compile(r"[\s%:]")


def find_images(root: str | os.PathLike) -> list[str]:
    """Image paths under root, relative to it, '/'-separated and sorted (stable across machines).
    Hidden files and folders (e.g. .DS_Store, .git) are ignored."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel_folder = os.path.relpath(folder, root)
        for name in files:
            if not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES):
                rel = name if rel_folder == "." else f"{rel_folder}/{name}"
                found.append(rel.replace(os.sep, "/"))
    return sorted(found)


def raw_stem(image_rel: str) -> str:
    """The raw file's name (without .raw) for an image path: the path itself, with the few characters
    that would break an SNPE input list percent-encoded."""
    return _UNSAFE_IN_LIST.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), image_rel)


def image_of_stem(stem: str) -> str:
    """Inverse of raw_stem."""
    return unquote(stem)


def _unit_hash(image_id: str, salt: str) -> float:
    digest = hashlib.sha256(f"{salt}:{image_id}".encode("utf-8")).hexdigest()
    return int(digest[:12], 16) / 16**12


def shard_of(image_id: str, shards: int) -> int:
    """A stable shard for an image (by its relative path): adding or editing one image touches one
    calibration shard only."""
    return int(_unit_hash(image_id, "shard") * shards)


def is_held_out(image_id: str, fraction: float) -> bool:
    """Stable evaluation split: an image stays on its side whatever else is added or removed."""
    return _unit_hash(image_id, "holdout") < fraction


def search_sample(image_ids: list[str], count: int) -> list[str]:
    """A stable sample of `count` calibration images for the accuracy search: adding or removing one image
    changes at most one member."""
    return sorted(sorted(image_ids, key=lambda i: _unit_hash(i, "search"))[:count])
