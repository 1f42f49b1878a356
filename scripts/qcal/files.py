"""Atomic file writes: every qcal output goes through here, so a killed job never leaves a partial file
under its final name (a rerun would otherwise trust it)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path


# mkstemp creates files readable by their owner only; outputs get the mode a plain open() would give.
# The umask is read once, at import: setting it to read it back is process-wide, not thread-safe.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary name in the same folder, then rename over path (atomic on POSIX)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_atomic(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, value: object) -> None:
    write_text(path, json.dumps(value, indent=1) + "\n")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path next to `path` for writers that take a file name (ONNX Runtime's quantizer,
    onnx.save): renamed over `path` when the block succeeds, removed when it fails or is interrupted.
    The name is short (a fixed prefix and 8 random characters), so a long target name never makes the
    temporary one exceed the file system's limit."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".qcal-", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        if err.filename is None:  # a failed write() names no file: name the one being written
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def tsv_text(rows: Sequence[Sequence], header: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, delimiter="\t", lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()
